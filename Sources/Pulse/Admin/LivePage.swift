// Admin: the live view, `GET /` on the admin port. One self-contained page
// (HTML, CSS and JS in web/index.html at the repository root, embedded in the binary by
// scripts/embed-web.sh as Web/LivePageHTML.swift; no CDN, no build step) that
// follows `GET /events` (AdminEvents.swift) and changes the tempo through
// `POST /tempo`, showing the API's refusals as they are.
//
// The Content-Security-Policy lets the page load nothing but itself and
// connect only to the node that served it.

enum LivePage {
    static let contentType = "text/html; charset=utf-8"
    /// Encoded once, on first use (not on the beat path).
    static let bytes: [UInt8] = Array(LivePageHTML.text.utf8)
    static let headers: [(name: String, value: String)] = [
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                + "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]
}
