#ifndef VEIL_KAFKA_BASELINE_H
#define VEIL_KAFKA_BASELINE_H
#include <stddef.h>
#include <stdint.h>

/// Plain C loops over librdkafka: the baseline Veil's Kafka layer is compared with.
/// Each returns elapsed seconds, or a negative number on error.
/// Message i goes to partition i % partitions, so every partition holds the same share.
double veil_baseline_produce(const char *brokers, const char *topic, int64_t count, size_t size, int32_t partitions);
/// `fetch_queue_kbytes`: librdkafka's pre-fetch bound (queued.max.messages.kbytes), the same on both sides.
double veil_baseline_consume(const char *brokers, const char *topic, const char *group, int64_t count, int fetch_queue_kbytes);

#endif
