// Node's http-parser (Debian libhttp-parser-dev), exposed to Swift.
#include <http_parser.h>
