/*
 * abi.c - what lets the public option structs grow: each carries its size
 * (set by its _options_init), and the library copies only that many bytes
 * of it, so a program compiled against an older, shorter struct gets the
 * defaults for the fields appended since.
 */
#include "internal.h"

#include <string.h>

int outbox__options_copy(void *dst, size_t dst_size, const void *src, size_t src_size,
                         size_t min_size, const char *fn, const char *init_fn, outbox_error *err)
{
    if (src_size < min_size)
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: the options' size is %zu, below the smallest layout this "
                             "library reads (%zu bytes); fill the options with %s before "
                             "setting fields",
                             fn, src_size, min_size, init_fn);
    memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
    *(size_t *)dst = dst_size; /* the first field: the size of what dst now holds */
    return OUTBOX_OK;
}
