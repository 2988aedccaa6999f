// CSodium: libsodium (Debian libsodium-dev) for the node's Ed25519
// publication signatures: crypto_sign_detached writes into a caller's buffer
// and allocates nothing, so the beat path can sign every frame.
#ifndef CSODIUM_SHIM_H
#define CSODIUM_SHIM_H

#include <sodium.h>

#endif
