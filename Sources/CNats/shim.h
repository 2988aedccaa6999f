// The NATS C client (Debian libnats-dev), exposed to Swift.
#include <nats/nats.h>
