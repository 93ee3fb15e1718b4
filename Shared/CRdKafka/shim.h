#ifndef VEIL_CRDKAFKA_SHIM_H
#define VEIL_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <sys/prctl.h>

/// Names the calling thread (at most 15 bytes reach the kernel), so `top -H` and
/// `perf` show VeilKafka's poll threads by name.
static inline void veil_name_current_thread(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}
#endif
