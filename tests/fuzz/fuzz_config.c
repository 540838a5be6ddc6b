/*
 * fuzz_config - the worker config file (operator input, read at start) and
 * the small text parsers every worker applies to outside values:
 * config_load() on the input as YAML, isotime_parse() and
 * email_normalize() on the input as a NUL-terminated string. None may
 * crash or leak on any bytes; a loaded config must print, list its tenants
 * and build each tenant's section.
 *
 * config_load() reads a file: the input is written to an in-memory file
 * (memfd, created once per process) and loaded through /proc/self/fd/<n>.
 * Besides the common table the load uses a worker-like extra section
 * ("fuzz.*": a per-tenant choice, int and bool, a secret) so that
 * `tenants:` overrides reach config_tenant_section(). Keys of the real
 * workers' own sections are unknown here and end the load with an error
 * after the common part was read.
 * Seeds (tests/fuzz/corpus/config/): deploy/base/<worker>/config.yaml and
 * deploy/overlays/local/<worker>-config.yaml as they are and cut to the
 * common sections, with tenants, plus RFC 3339 times and addresses.
 */
#define _GNU_SOURCE /* memfd_create */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/config.h"
#include "common/email.h"
#include "common/isotime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The worker-like extra section. */
struct fuzz_section {
    char *mode;
    int count;
    bool flag;
    char *token;
};

#define FZ(f) offsetof(struct fuzz_section, f)

static const struct config_field fuzz_fields[] = {
    {"fuzz.mode", NULL, CONFIG_STRING, FZ(mode), "a", 0, 0, CONFIG_PER_TENANT,
     "a|b|c", "a choice, per tenant"},
    {"fuzz.count", NULL, CONFIG_INT, FZ(count), "5", 1, 1000, CONFIG_PER_TENANT,
     NULL, "an int with bounds, per tenant"},
    {"fuzz.flag", NULL, CONFIG_BOOL, FZ(flag), "false", 0, 0, CONFIG_PER_TENANT,
     NULL, "a bool, per tenant"},
    {"fuzz.token", NULL, CONFIG_STRING, FZ(token), "", 0, 0, CONFIG_SECRET,
     NULL, "a secret"},
};

/* Writes the input to the process's memfd; returns its path in @p path or
 * false. The descriptor stays open for the life of the process. */
static bool input_file(const uint8_t *data, size_t size, char *path,
                       size_t path_size)
{
    static int fd = -1;
    size_t done = 0;

    if (fd < 0)
        fd = memfd_create("fuzz_config", 0);
    if (fd < 0 || ftruncate(fd, 0) != 0)
        return false;
    while (done < size) {
        ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
        if (w <= 0)
            return false;
        done += (size_t)w;
    }
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
    return true;
}

/* Uses a loaded config the way workers and --check-config do. */
static void exercise(const struct config *cfg, const struct config_section *sec)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    size_t n = config_tenant_count(cfg);

    if (out) {
        config_print_effective(out, cfg, sec, 1);
        fclose(out);
        free(text);
    }
    for (size_t i = 0; i < n; i++) {
        char name[256];
        char err[256];
        struct fuzz_section t;
        if (!config_tenant_name(cfg, i, name, sizeof(name)))
            continue;
        if (config_tenant_section(cfg, sec, name, &t, err, sizeof(err)) ==
            CS_ERR_OK)
            config_section_free(sec, &t);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    char path[64];
    char err[1024];
    char email[256];
    struct config cfg;
    struct fuzz_section fz;
    struct config_section sec = {
        "fuzz", fuzz_fields, sizeof(fuzz_fields) / sizeof(fuzz_fields[0]), &fz};

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    (void)isotime_parse(text);
    if (email_normalize(text, email, sizeof(email)) &&
        (strchr(email, '@') == NULL || strlen(email) > 254))
        abort(); /* accepted but not an address */
    if (input_file(data, size, path, sizeof(path))) {
        if (config_load(&cfg, "fuzz", "crmsync.fuzz.events", path, &sec, 1, err,
                        sizeof(err)) == CS_ERR_OK) {
            exercise(&cfg, &sec);
            config_free(&cfg, &sec, 1);
        }
    }
    free(text);
    return 0;
}
