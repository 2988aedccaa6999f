// The NATS C client (Debian libnats-dev), exposed to Swift.
#include <nats/nats.h>

// libnats' own free of a message (src/msg.c; exported by libnats.so but not
// in <nats/nats.h>): what `natsMsg_Destroy` does when the library's
// garbage collector is not involved. `natsMsg_Destroy` hands every message to
// the GC thread (a lock and, when that thread sleeps, a futex wake); the loop
// frees the messages it read itself with this instead (NatsLoopSubscription).
// Only for messages the caller owns from `natsSubscription_NextMsg`.
// Read against 3.4.1; a libnats without the symbol fails at link time.
void natsMsg_free(void *object);
