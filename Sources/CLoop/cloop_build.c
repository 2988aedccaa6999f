// The commit this binary was built from, for `pulse --version` and
// `backbeat_build_info`. `make build`/`make release` (and the Dockerfile)
// write `build_commit.h` next to this file (git-ignored) from
// `git describe --always --dirty`, and touch this file when it changes so the
// build recompiles it; a plain `swift build` without it says "unknown".
#if defined(__has_include)
#if __has_include("build_commit.h")
#include "build_commit.h"
#endif
#endif
#ifndef CLOOP_BUILD_COMMIT
#define CLOOP_BUILD_COMMIT "unknown"
#endif

#include "cloop.h"

const char *cloop_build_commit(void) { return CLOOP_BUILD_COMMIT; }
