#include "kafka_baseline.h"
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t delivered = 0, failed = 0;
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk; (void)opaque;
    if (m->err) failed++; else delivered++;
}

static rd_kafka_conf_t *base_conf(const char *brokers) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    return conf;
}

double veil_baseline_produce(const char *brokers, const char *topic, int64_t count, size_t size, int32_t partitions) {
    char err[512];
    rd_kafka_conf_t *conf = base_conf(brokers);
    // The same settings as Veil's producer defaults.
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
    rd_kafka_conf_set(conf, "acks", "all", err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
    rd_kafka_conf_set(conf, "queue.buffering.max.messages", "100000", err, sizeof err);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) { fprintf(stderr, "baseline: %s\n", err); return -1; }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    char *payload = malloc(size);
    memset(payload, 'x', size);
    delivered = failed = 0;
    double start = now_seconds();
    for (int64_t i = 0; i < count; i++) {
        while (rd_kafka_produce(rkt, (int32_t)(i % partitions), RD_KAFKA_MSG_F_COPY, payload, size, NULL, 0, NULL) == -1) {
            if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL) { fprintf(stderr, "baseline produce failed\n"); return -1; }
            rd_kafka_poll(rk, 10);
        }
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 120000);
    double elapsed = now_seconds() - start;
    free(payload);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return (delivered == count && failed == 0) ? elapsed : -1;
}

double veil_baseline_consume(const char *brokers, const char *topic, const char *group, int64_t count, int fetch_queue_kbytes) {
    char err[512];
    rd_kafka_conf_t *conf = base_conf(brokers);
    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.partition.eof", "false", err, sizeof err);
    // The same fetch-affecting settings as VeilKafka's consumer defaults, so the
    // comparison measures the layer, not a configuration choice.
    rd_kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof err);
    rd_kafka_conf_set(conf, "fetch.error.backoff.ms", "50", err, sizeof err);
    rd_kafka_conf_set(conf, "session.timeout.ms", "10000", err, sizeof err);
    rd_kafka_conf_set(conf, "auto.commit.interval.ms", "1000", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.offset.store", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "queued.min.messages", "10000000", err, sizeof err);
    char kbytes[16];
    snprintf(kbytes, sizeof kbytes, "%d", fetch_queue_kbytes);
    rd_kafka_conf_set(conf, "queued.max.messages.kbytes", kbytes, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) { fprintf(stderr, "baseline: %s\n", err); return -1; }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    int64_t received = 0;
    size_t bytes = 0;
    double start = 0;
    while (received < count) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            if (start > 0 && now_seconds() - start > 300) { fprintf(stderr, "baseline: stalled at %lld\n", (long long)received); return -2; }
            continue;
        }
        if (!m->err) {
            if (received == 0) start = now_seconds();  // time from the first message, as Veil's side
            received++;
            bytes += m->len;
            rd_kafka_offset_store(m->rkt, m->partition, m->offset);  // processed-only commits, as Veil
        }
        rd_kafka_message_destroy(m);
    }
    double elapsed = now_seconds() - start;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return bytes > 0 ? elapsed : -1;
}
