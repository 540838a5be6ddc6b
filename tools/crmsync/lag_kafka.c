/*
 * lag_kafka - committed offsets, watermarks and group discovery for
 * `crmsync lag`; see lag_kafka.h. The approach (consumer handles that never
 * subscribe, rd_kafka_committed() for OffsetFetch, watermarks per
 * partition, metadata for all topics so the mock cluster does not
 * auto-create a named one) follows tools/kafka-offsets/main.c.
 *
 * Why not the admin API (ListConsumerGroups, ListConsumerGroupOffsets,
 * DescribeConsumerGroups): in librdkafka 2.0.2 they abort in
 * rd_kafka_enq_once_del_source_return() or hang rd_kafka_destroy() against
 * the mock cluster (librdkafka#4605, #3663). The classic calls used here
 * fail cleanly. The price is one handle per group (rd_kafka_committed()
 * uses the handle's group.id).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "lag_kafka.h"

/* A handle whose group.id is one group (for rd_kafka_committed()). */
struct group_handle {
    char *group;    /* owned */
    rd_kafka_t *rk; /* owned */
};

struct lag_client {
    struct lag_client_conf conf; /* copy; strings borrowed */
    rd_kafka_t *rk;              /* owned; no group.id */
    struct group_handle *gh;     /* owned; one per sampled group */
    size_t gh_cnt;
    const struct rd_kafka_metadata *md; /* owned; NULL until first use */
    int timeout_ms;                     /* per request */
    int groups_api; /* ListGroups/DescribeGroups: 0 unknown, 1 yes, -1 no */
};

/* True when a property name may carry a secret (its value is redacted
 * from librdkafka's log lines). */
static bool prop_is_secret(const char *name, size_t n)
{
    static const char *const words[] = {"password",  "secret", "token",
                                        "key",       "jaas",   "oauthbearer",
                                        "credential"};
    char buf[256];

    if (n >= sizeof(buf))
        return true;
    memcpy(buf, name, n);
    buf[n] = '\0';
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strstr(buf, words[i]))
            return true;
    }
    return false;
}

/* Replaces every occurrence of the value of prop (if its name looks
 * secret) in line with "***". */
static void redact_prop(char *line, const char *prop)
{
    const char *eq = strchr(prop, '=');
    const char *value;
    size_t vlen;
    char *hit;

    if (!eq || !prop_is_secret(prop, (size_t)(eq - prop)))
        return;
    value = eq + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    vlen = strlen(value);
    if (vlen == 0)
        return;
    for (;;) {
        hit = strstr(line, value);
        if (!hit)
            return;
        /* "***" is never longer than a value of >= 3 chars; shorter ones
         * are blanked in place. */
        if (vlen >= 3) {
            memcpy(hit, "***", 3);
            memmove(hit + 3, hit + vlen, strlen(hit + vlen) + 1);
        } else {
            memset(hit, '*', vlen);
        }
    }
}

/* librdkafka log callback: stderr like the default one, minus secrets.
 * The handle's opaque is its struct lag_client_conf (borrowed). */
static void log_redacted(const rd_kafka_t *rk, int level, const char *fac,
                         const char *buf)
{
    const struct lag_client_conf *conf = rd_kafka_opaque(rk);
    char line[1024];

    snprintf(line, sizeof(line), "%s", buf);
    for (size_t i = 0; conf && i < conf->prop_cnt; i++)
        redact_prop(line, conf->props[i]);
    fprintf(stderr, "%%%d|%s|%s| %s\n", level, fac, rd_kafka_name(rk), line);
}

/*
 * Sets one "name=value" (blanks around the '=' are ignored); false with a
 * reason in errstr that never contains the value: librdkafka's text is
 * used only when the value does not occur in it.
 */
static bool conf_set_prop(rd_kafka_conf_t *conf, const char *prop, char *errstr,
                          size_t errstr_size)
{
    char name[256];
    char why[512];
    const char *eq = strchr(prop, '=');
    const char *value;
    size_t n;

    if (!eq || eq == prop || (size_t)(eq - prop) >= sizeof(name)) {
        snprintf(errstr, errstr_size,
                 "bad property (want name=value, %zu chars)", strlen(prop));
        return false;
    }
    n = (size_t)(eq - prop);
    while (n > 0 && (prop[n - 1] == ' ' || prop[n - 1] == '\t'))
        n--;
    memcpy(name, prop, n);
    name[n] = '\0';
    value = eq + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (rd_kafka_conf_set(conf, name, value, why, sizeof(why)) ==
        RD_KAFKA_CONF_OK)
        return true;
    if (*value && strstr(why, value))
        snprintf(errstr, errstr_size, "property %s: invalid value", name);
    else
        snprintf(errstr, errstr_size, "property %s: %s", name, why);
    return false;
}

/* Creates a consumer handle (group.id = group unless NULL); NULL with a
 * value-free reason in errstr and *bad_conf for configuration errors. */
static rd_kafka_t *handle_new(const struct lag_client_conf *conf,
                              const char *group, bool *bad_conf, char *errstr,
                              size_t errstr_size)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_t *rk;

    *bad_conf = true;
    if (conf->bootstrap &&
        rd_kafka_conf_set(kc, "bootstrap.servers", conf->bootstrap, errstr,
                          errstr_size) != RD_KAFKA_CONF_OK)
        goto out_destroy_conf;
    if (rd_kafka_conf_set(kc, "client.id", "crmsync-lag", errstr,
                          errstr_size) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(kc, "enable.auto.commit", "false", errstr,
                          errstr_size) != RD_KAFKA_CONF_OK)
        goto out_destroy_conf;
    for (size_t i = 0; i < conf->prop_cnt; i++) {
        if (!conf_set_prop(kc, conf->props[i], errstr, errstr_size))
            goto out_destroy_conf;
    }
    /* After the props: the group is ours to choose, never the user's. */
    if (group && rd_kafka_conf_set(kc, "group.id", group, errstr,
                                   errstr_size) != RD_KAFKA_CONF_OK)
        goto out_destroy_conf;
    /* conf outlives the handle (see lag_kafka.h). */
    rd_kafka_conf_set_opaque(kc, (void *)conf);
    rd_kafka_conf_set_log_cb(kc, log_redacted);
    /* rd_kafka_new() takes ownership of kc on success only. */
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, errstr_size);
    if (!rk)
        goto out_destroy_conf;
    *bad_conf = false;
    return rk;

out_destroy_conf:
    rd_kafka_conf_destroy(kc);
    return NULL;
}

struct lag_client *lag_client_new(const struct lag_client_conf *conf,
                                  bool *bad_conf, char *errstr,
                                  size_t errstr_size)
{
    struct lag_client *c = calloc(1, sizeof(*c));

    *bad_conf = false;
    if (!c) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    /* The handles' log callback reads c->conf: it must not move. */
    c->conf = *conf;
    c->timeout_ms = conf->timeout_ms;
    c->rk = handle_new(&c->conf, NULL, bad_conf, errstr, errstr_size);
    if (!c->rk) {
        free(c);
        return NULL;
    }
    return c;
}

void lag_client_free(struct lag_client *c)
{
    if (!c)
        return;
    if (c->md)
        rd_kafka_metadata_destroy(c->md);
    /* Never subscribed: nothing to close or commit. */
    for (size_t i = 0; i < c->gh_cnt; i++) {
        rd_kafka_destroy(c->gh[i].rk);
        free(c->gh[i].group);
    }
    free(c->gh);
    rd_kafka_destroy(c->rk);
    free(c);
}

/* The handle with group.id = group, created on first use (borrowed, valid
 * until lag_client_free()); NULL with errstr. */
static rd_kafka_t *group_handle(struct lag_client *c, const char *group,
                                char *errstr, size_t errstr_size)
{
    struct group_handle *ngh;
    bool bad_conf;
    rd_kafka_t *rk;
    char *name;

    for (size_t i = 0; i < c->gh_cnt; i++) {
        if (!strcmp(c->gh[i].group, group))
            return c->gh[i].rk;
    }
    ngh = realloc(c->gh, (c->gh_cnt + 1) * sizeof(*ngh));
    if (!ngh)
        goto out_nomem;
    c->gh = ngh;
    name = strdup(group);
    if (!name)
        goto out_nomem;
    rk = handle_new(&c->conf, group, &bad_conf, errstr, errstr_size);
    if (!rk) {
        free(name);
        return NULL;
    }
    c->gh[c->gh_cnt].group = name;
    c->gh[c->gh_cnt].rk = rk;
    c->gh_cnt++;
    return rk;

out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
}

void lag_strv_free(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

bool lag_strv_add(char ***v, size_t *n, const char *s)
{
    char **nv;
    char *dup;

    for (size_t i = 0; i < *n; i++) {
        if (!strcmp((*v)[i], s))
            return true;
    }
    dup = strdup(s);
    if (!dup)
        return false;
    nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (!nv) {
        free(dup);
        return false;
    }
    nv[(*n)++] = dup;
    *v = nv;
    return true;
}

/*
 * Lists groups with the classic ListGroups API; the mock cluster does not
 * support it, which is remembered so lag_client_owners() does not ask.
 */
enum cs_err lag_client_list_groups(struct lag_client *c, const char *prefix,
                                   char ***groups, size_t *cnt,
                                   bool *unsupported, char *errstr,
                                   size_t errstr_size)
{
    const struct rd_kafka_group_list *gl = NULL;
    rd_kafka_resp_err_t kerr;
    enum cs_err err = CS_ERR_OK;

    *groups = NULL;
    *cnt = 0;
    *unsupported = false;
    kerr = rd_kafka_list_groups(c->rk, NULL, &gl, c->timeout_ms);
    if (kerr == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE) {
        c->groups_api = -1;
        *unsupported = true;
        return CS_ERR_OK;
    }
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* _PARTIAL included: an incomplete listing would hide groups. */
        snprintf(errstr, errstr_size, "ListGroups: %s", rd_kafka_err2str(kerr));
        if (gl)
            rd_kafka_group_list_destroy(gl);
        return CS_ERR_KAFKA;
    }
    c->groups_api = 1;
    for (int i = 0; i < gl->group_cnt; i++) {
        const struct rd_kafka_group_info *g = &gl->groups[i];

        /* consumer groups only (not Connect workers etc.) */
        if (g->protocol_type && g->protocol_type[0] &&
            strcmp(g->protocol_type, "consumer") != 0)
            continue;
        if (strncmp(g->group, prefix, strlen(prefix)) != 0)
            continue;
        if (!lag_strv_add(groups, cnt, g->group)) {
            snprintf(errstr, errstr_size, "out of memory");
            err = CS_ERR_NOMEM;
            break;
        }
    }
    rd_kafka_group_list_destroy(gl);
    if (err != CS_ERR_OK) {
        lag_strv_free(*groups, *cnt);
        *groups = NULL;
        *cnt = 0;
    } else if (*cnt > 1) {
        qsort(*groups, *cnt, sizeof(**groups), cmp_str);
    }
    return err;
}

/* Fetches all-topics metadata once; false with errstr on error. Asks for
 * all topics: naming one would make the mock cluster (and brokers with
 * auto.create.topics.enable) create it. */
static bool metadata_load(struct lag_client *c, char *errstr,
                          size_t errstr_size)
{
    rd_kafka_resp_err_t err;

    if (c->md)
        return true;
    err = rd_kafka_metadata(c->rk, 1, NULL, &c->md, c->timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        c->md = NULL;
        snprintf(errstr, errstr_size, "metadata: %s", rd_kafka_err2str(err));
        return false;
    }
    return true;
}

int lag_client_partition_cnt(struct lag_client *c, const char *topic,
                             char *errstr, size_t errstr_size)
{
    if (!metadata_load(c, errstr, errstr_size))
        return -1;
    for (int i = 0; i < c->md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &c->md->topics[i];

        if (strcmp(t->topic, topic) != 0)
            continue;
        if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "metadata %s: %s", topic,
                     rd_kafka_err2str(t->err));
            return -1;
        }
        return t->partition_cnt;
    }
    return 0;
}

/*
 * One OffsetFetch of parts for group. Returns a copy of parts with the
 * committed offsets (caller destroys) or NULL with errstr.
 */
static rd_kafka_topic_partition_list_t *
offset_fetch(struct lag_client *c, const char *group,
             const rd_kafka_topic_partition_list_t *parts, char *errstr,
             size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *out;
    rd_kafka_resp_err_t kerr;
    rd_kafka_t *rk = group_handle(c, group, errstr, errstr_size);

    if (!rk)
        return NULL;
    out = rd_kafka_topic_partition_list_copy(parts);
    kerr = rd_kafka_committed(rk, out, c->timeout_ms);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(errstr, errstr_size, "OffsetFetch %s: %s", group,
                 rd_kafka_err2str(kerr));
        rd_kafka_topic_partition_list_destroy(out);
        return NULL;
    }
    return out;
}

/* Adds every topic of l with a committed offset; false on out of memory. */
static bool add_committed_topics(const rd_kafka_topic_partition_list_t *l,
                                 char ***topics, size_t *cnt)
{
    for (int i = 0; i < l->cnt; i++) {
        if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
            l->elems[i].offset >= 0 &&
            !lag_strv_add(topics, cnt, l->elems[i].topic))
            return false;
    }
    return true;
}

enum cs_err lag_client_group_topics(struct lag_client *c, const char *group,
                                    char ***topics, size_t *cnt, char *errstr,
                                    size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *all;
    rd_kafka_topic_partition_list_t *got = NULL;
    enum cs_err err = CS_ERR_OK;

    *topics = NULL;
    *cnt = 0;
    if (!metadata_load(c, errstr, errstr_size))
        return CS_ERR_KAFKA;
    /* rd_kafka_committed() needs explicit partitions: ask for every
     * partition of every non-internal topic in one OffsetFetch. */
    all = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < c->md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &c->md->topics[i];

        if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR ||
            (t->topic[0] == '_' && t->topic[1] == '_'))
            continue;
        for (int p = 0; p < t->partition_cnt; p++)
            rd_kafka_topic_partition_list_add(all, t->topic,
                                              t->partitions[p].id);
    }
    if (all->cnt > 0) {
        got = offset_fetch(c, group, all, errstr, errstr_size);
        if (!got) {
            err = CS_ERR_KAFKA;
            goto out_destroy_all;
        }
        if (!add_committed_topics(got, topics, cnt)) {
            snprintf(errstr, errstr_size, "out of memory");
            err = CS_ERR_NOMEM;
            goto out_destroy_got;
        }
    }
    if (*cnt > 1)
        qsort(*topics, *cnt, sizeof(**topics), cmp_str);
out_destroy_got:
    if (got)
        rd_kafka_topic_partition_list_destroy(got);
out_destroy_all:
    rd_kafka_topic_partition_list_destroy(all);
    if (err != CS_ERR_OK) {
        lag_strv_free(*topics, *cnt);
        *topics = NULL;
        *cnt = 0;
    }
    return err;
}

enum cs_err lag_client_sample(struct lag_client *c, const char *group,
                              struct lag_obs *obs, size_t n, char *errstr,
                              size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_topic_partition_list_t *got;
    rd_kafka_resp_err_t kerr;

    if (n == 0)
        return CS_ERR_OK;
    parts = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(parts, obs[i].topic,
                                          obs[i].partition);
    got = offset_fetch(c, group, parts, errstr, errstr_size);
    rd_kafka_topic_partition_list_destroy(parts);
    if (!got)
        return CS_ERR_KAFKA;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_find(
            got, obs[i].topic, obs[i].partition);

        if (tp && tp->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "OffsetFetch %s %s[%d]: %s", group,
                     obs[i].topic, (int)obs[i].partition,
                     rd_kafka_err2str(tp->err));
            rd_kafka_topic_partition_list_destroy(got);
            return CS_ERR_KAFKA;
        }
        obs[i].committed = tp && tp->offset >= 0 ? tp->offset : -1;
    }
    rd_kafka_topic_partition_list_destroy(got);
    for (size_t i = 0; i < n; i++) {
        kerr = rd_kafka_query_watermark_offsets(c->rk, obs[i].topic,
                                                obs[i].partition, &obs[i].low,
                                                &obs[i].high, c->timeout_ms);
        if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "watermarks %s[%d]: %s", obs[i].topic,
                     (int)obs[i].partition, rd_kafka_err2str(kerr));
            return CS_ERR_KAFKA;
        }
    }
    return CS_ERR_OK;
}

/* Big-endian readers over a bounded buffer; false when out of bytes. */
static bool rd_i16(const unsigned char **p, const unsigned char *end,
                   int16_t *v)
{
    if (end - *p < 2)
        return false;
    *v = (int16_t)(((unsigned)(*p)[0] << 8) | (*p)[1]);
    *p += 2;
    return true;
}

static bool rd_i32(const unsigned char **p, const unsigned char *end,
                   int32_t *v)
{
    if (end - *p < 4)
        return false;
    *v = (int32_t)(((uint32_t)(*p)[0] << 24) | ((uint32_t)(*p)[1] << 16) |
                   ((uint32_t)(*p)[2] << 8) | (uint32_t)(*p)[3]);
    *p += 4;
    return true;
}

/*
 * Marks the observations in a member's assignment (ConsumerProtocol
 * Assignment: int16 version, [string topic, [int32 partition]], userdata)
 * as owned by client_id. Stops quietly at malformed data.
 */
static void owners_from_assignment(const void *data, size_t size,
                                   const char *client_id, struct lag_obs *obs,
                                   size_t n)
{
    const unsigned char *p = data;
    const unsigned char *end = p + size;
    int16_t version;
    int32_t topic_cnt;

    if (!data || !rd_i16(&p, end, &version) || !rd_i32(&p, end, &topic_cnt))
        return;
    for (int32_t t = 0; t < topic_cnt; t++) {
        int16_t len;
        int32_t part_cnt;
        const unsigned char *topic;

        if (!rd_i16(&p, end, &len) || len < 0 || end - p < len)
            return;
        topic = p;
        p += len;
        if (!rd_i32(&p, end, &part_cnt))
            return;
        for (int32_t k = 0; k < part_cnt; k++) {
            int32_t part;

            if (!rd_i32(&p, end, &part))
                return;
            for (size_t i = 0; i < n; i++) {
                if (obs[i].partition == part &&
                    strlen(obs[i].topic) == (size_t)len &&
                    !memcmp(obs[i].topic, topic, (size_t)len))
                    snprintf(obs[i].client_id, sizeof(obs[i].client_id), "%s",
                             client_id);
            }
        }
    }
}

void lag_client_owners(struct lag_client *c, const char *group,
                       struct lag_obs *obs, size_t n)
{
    const struct rd_kafka_group_list *gl = NULL;
    rd_kafka_resp_err_t kerr;

    for (size_t i = 0; i < n; i++)
        obs[i].client_id[0] = '\0';
    if (c->groups_api < 0)
        return;
    kerr = rd_kafka_list_groups(c->rk, group, &gl, c->timeout_ms);
    if (kerr == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE)
        c->groups_api = -1;
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR || !gl)
        goto out_destroy;
    for (int g = 0; g < gl->group_cnt; g++) {
        const struct rd_kafka_group_info *gi = &gl->groups[g];

        if (strcmp(gi->group, group) != 0)
            continue;
        for (int m = 0; m < gi->member_cnt; m++)
            owners_from_assignment(
                gi->members[m].member_assignment,
                (size_t)gi->members[m].member_assignment_size,
                gi->members[m].client_id ? gi->members[m].client_id : "", obs,
                n);
    }
out_destroy:
    if (gl)
        rd_kafka_group_list_destroy(gl);
}
