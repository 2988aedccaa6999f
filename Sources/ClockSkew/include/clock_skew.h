// clock_skew.h — libClockSkew.so, an LD_PRELOAD library that makes one
// process's wall clock run fast or slow (PER-003's skewed node, issue 24).
// It has no API: set BACKBEAT_CLOCK_SKEW_PPM and preload it. See clock_skew.c.
#pragma once

/// The rate this process's CLOCK_REALTIME runs at, in ppm against the real
/// one (0 when BACKBEAT_CLOCK_SKEW_PPM is unset or not a number).
long clock_skew_ppm(void);
