/* The log-linear latency histogram the benchmarks share with the advisor
 * (one layout, one percentile rule): it lives in src/advisor/hist.h. */
#include "../src/advisor/hist.h"
