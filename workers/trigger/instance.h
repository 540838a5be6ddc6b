/*
 * instance - one journey instance (a profile inside a journey): its Redis
 * key and its state blob.
 *
 * The blob is what Redis stores per instance, compact because a million
 * pending timers must cost <= ~100 bytes each (docs/trigger.md):
 *
 *   header, 19 bytes little-endian, read and written by the Lua scripts
 *   (store.c) as struct "<HBBBI4I4I4H":
 *     ver u16      bumped by every write; a completion carries the version
 *                  it claimed (compare-and-set)
 *     status u8    1 active, 2 done, 3 exited
 *     pc u8        current step
 *     iter u8      step phase: reminders sent so far + 1, or 1 = waiting
 *     started u32  journey start, epoch seconds (event time)
 *     deadline u32 the start trigger's deadline, epoch seconds (0 none)
 *     slot u32     wheel slot of the pending timer (due / 60 s), 0 none
 *     slot_n u16   sub-slot within it
 *   instance id, 4 bytes: derived from the start event's id, so action
 *                  ids (which also name the profile) differ between
 *                  re-entries and repeat on replays
 *   context (C only; dropped when the instance ends): tenant, journey
 *     (4-byte hash of its id: instance_journey_hash, unique per file),
 *     profile (type byte + 16-byte GUID), e-mail (only when the profile has
 *     no id or a template uses it: mails to entity profiles read the
 *     address from the CRM), stored attributes. Small enough (~55 bytes
 *     for a contact) to stay below Redis's listpack value limit (64).
 *
 * The key: 10 bytes of UUIDv5(tenant|journey|profile) (80 bits: the chance
 * of any collision among 100 million instances is ~4e-9), stored as a
 * field of one of 16384 shard hashes so each stays a small listpack.
 *
 * Ownership: struct instance owns its attribute value copies
 * (instance_clear frees them).
 */
#ifndef CRMSYNC_TRIGGER_INSTANCE_H
#define CRMSYNC_TRIGGER_INSTANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "workers/trigger/journey.h"

#define INST_KEY_LEN   10
#define INST_HDR_LEN   19
#define INST_ID_LEN    4
#define INST_ATTRS_MAX 32

enum inst_status { INST_ACTIVE = 1, INST_DONE = 2, INST_EXITED = 3 };

struct instance {
    unsigned ver, status, pc, iter;
    uint32_t started_s;
    uint32_t deadline_s;
    uint32_t slot;
    unsigned slot_n;
    uint8_t id[INST_ID_LEN];
    /* context */
    char tenant[65];
    char journey[JOURNEY_ID_MAX + 1]; /* encode: from here; decode: "" -
                                         the caller looks journey_hash up */
    uint32_t journey_hash;            /* set by decode */
    char ptype[8]; /* "contact" | "lead" | "account" | "" (email only) */
    char pid[37];  /* GUID or "" */
    char email[256];
    size_t nattrs;
    char *attrs[INST_ATTRS_MAX]; /* values in journey.attrs order (owned) */
};

/** @brief The instance key (10 bytes) of a profile in a journey. */
void instance_key(const char *tenant, const char *journey, const char *ptype,
                  const char *pid, const char *email,
                  uint8_t key[INST_KEY_LEN]);

/** @brief The 4-byte hash a blob stores instead of the journey id. */
uint32_t instance_journey_hash(const char *id);

/** @brief The instance id derived from the start event's id. */
void instance_id_from_event(const char *event_id, uint8_t id[INST_ID_LEN]);

/**
 * @brief Appends the blob (header, id, and the context unless @p header_only).
 * @returns CS_ERR_OK or CS_ERR_NOMEM.
 */
enum cs_err instance_encode(const struct instance *in, bool header_only,
                            struct buf *out);

/**
 * @brief Decodes a blob into *in (zeroed first; attribute values copied).
 * @returns CS_ERR_OK; CS_ERR_REDIS_PROTOCOL for a malformed blob;
 *          CS_ERR_NOMEM.
 */
enum cs_err instance_decode(const void *blob, size_t len, struct instance *in);

/** @brief Frees the attribute copies and zeroes *in. */
void instance_clear(struct instance *in);

/**
 * @brief The deterministic id of an action: UUIDv5 of tenant, journey,
 *        profile (type and id, else e-mail: what the key is made of),
 *        instance id, step and iteration (36 chars + NUL). The profile is
 *        part of it because the 4-byte instance id is unique only among the
 *        re-entries of one profile.
 */
void instance_action_id(const struct instance *in, unsigned pc, unsigned iter,
                        char out[37]);

#endif
