// COpenSSL: OpenSSL 3 (Debian libssl-dev) for the Raft transport's mutual
// TLS, plus the few helpers Swift cannot call directly (OpenSSL's macros) and
// one that walks a certificate's subjectAltName into plain text.
#ifndef COPENSSL_SHIM_H
#define COPENSSL_SHIM_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

/// Never asks for a pass phrase: an encrypted key fails to load (one line)
/// instead of prompting on the terminal and blocking the thread.
static inline int copenssl_no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf; (void)size; (void)rwflag; (void)u;
    return 0;
}

/// A context for TLS 1.3 only, both roles, mutual authentication required,
/// no session tickets (a session is one connection), partial writes from a
/// buffer that may move between calls (Swift arrays do), no pass-phrase
/// prompt (keys must be unencrypted files). NULL on failure.
static inline SSL_CTX *copenssl_ctx_new(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL) return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_default_passwd_cb(ctx, copenssl_no_passphrase);
    return ctx;
}

/// The oldest error on this thread's OpenSSL queue as text (the queue is
/// then cleared); "" when there is none.
static inline void copenssl_last_error(char *buf, size_t cap) {
    unsigned long code = ERR_get_error();
    if (cap == 0) return;
    buf[0] = 0;
    if (code != 0) ERR_error_string_n(code, buf, cap);
    ERR_clear_error();
}

static inline void copenssl_clear_errors(void) { ERR_clear_error(); }

/// Writes the subjectAltNames of `cert` as lines "DNS:name", "IP:a.b.c.d",
/// "URI:uri" into `buf` (NUL-terminated, truncated to `cap`). Other kinds
/// are skipped. Returns the number of names written, -1 without a SAN.
static inline int copenssl_cert_names(X509 *cert, char *buf, size_t cap) {
    if (cap == 0) return -1;
    buf[0] = 0;
    if (cert == NULL) return -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) return -1;
    int written = 0;
    size_t used = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
        char line[320];
        line[0] = 0;
        if (name->type == GEN_DNS || name->type == GEN_URI) {
            const ASN1_IA5STRING *s = name->type == GEN_DNS ? name->d.dNSName : name->d.uniformResourceIdentifier;
            int len = ASN1_STRING_length(s);
            if (len <= 0 || len > 255) continue;
            const unsigned char *data = ASN1_STRING_get0_data(s);
            if (memchr(data, 0, (size_t)len) != NULL || memchr(data, '\n', (size_t)len) != NULL) continue;
            snprintf(line, sizeof line, "%s:%.*s", name->type == GEN_DNS ? "DNS" : "URI", len, (const char *)data);
        } else if (name->type == GEN_IPADD && ASN1_STRING_length(name->d.iPAddress) == 4) {
            const unsigned char *ip = ASN1_STRING_get0_data(name->d.iPAddress);
            snprintf(line, sizeof line, "IP:%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
        } else {
            continue;
        }
        size_t len = strlen(line);
        if (used + len + 2 > cap) break;
        memcpy(buf + used, line, len);
        used += len;
        buf[used++] = '\n';
        buf[used] = 0;
        written++;
    }
    GENERAL_NAMES_free(names);
    return written;
}

/// The names of the certificate the peer of `ssl` presented (see
/// `copenssl_cert_names`); -1 when it presented none.
static inline int copenssl_peer_names(SSL *ssl, char *buf, size_t cap) {
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (cert == NULL) {
        if (cap > 0) buf[0] = 0;
        return -1;
    }
    int n = copenssl_cert_names(cert, buf, cap);
    X509_free(cert);
    return n;
}

/// The names of the context's own certificate.
static inline int copenssl_own_names(SSL_CTX *ctx, char *buf, size_t cap) {
    return copenssl_cert_names(SSL_CTX_get0_certificate(ctx), buf, cap);
}

#endif
