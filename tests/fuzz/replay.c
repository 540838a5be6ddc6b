/*
 * replay - the fuzz targets' driver when they are not built with libFuzzer
 * (every preset but `fuzz`): feeds each file of the directories or files
 * named on the command line to LLVMFuzzerTestOneInput(), in name order.
 *
 * The corpus directories (tests/fuzz/corpus/<target>/) hold the seeds and
 * every input that ever crashed a target, so the dev and asan ctest runs
 * replay them as regression tests. An empty or missing corpus fails: a
 * target that replays nothing proves nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file; false when it cannot be read. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long size;
    int ok = 0;

    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return 0;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto out_close;
    /* one spare byte: a zero-length input still gets a valid pointer */
    data = malloc((size_t)size + 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size)
        goto out_free;
    /* an exact-size copy, so ASan sees any read past the input */
    {
        uint8_t *exact = malloc((size_t)size ? (size_t)size : 1);
        if (!exact)
            goto out_free;
        memcpy(exact, data, (size_t)size);
        LLVMFuzzerTestOneInput(exact, (size_t)size);
        free(exact);
    }
    ok = 1;
out_free:
    free(data);
out_close:
    fclose(f);
    if (!ok)
        fprintf(stderr, "replay: cannot read %s\n", path);
    return ok;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    long done = 0;
    int failed = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;
        struct dirent **names = NULL;
        int n;

        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= !replay_file(argv[i]);
            done++;
            continue;
        }
        n = scandir(argv[i], &names, NULL, by_name);
        for (int k = 0; k < n; k++) {
            char path[4096];
            if (names[k]->d_name[0] != '.') {
                snprintf(path, sizeof(path), "%s/%s", argv[i],
                         names[k]->d_name);
                failed |= !replay_file(path);
                done++;
            }
            free(names[k]);
        }
        free(names);
    }
    printf("replayed %ld input(s)\n", done);
    if (done == 0) {
        fprintf(stderr, "replay: no inputs (an empty corpus proves nothing)\n");
        return 1;
    }
    return failed;
}
