// readText(fd, size): a large state file's bytes for the CLI's index (src/core/state.ts), read without the
// page faults of the usual way. Reading a file in Node costs two fresh copies of it (the Buffer read
// into, then the Latin-1 string made from it), and every page of both is a fault when first touched:
// on the VMs measured about 12 µs each, 450 pages a copy at 10,000 profiles (1.8 MB). Here the memory
// is mapped whole and populated in one call (MAP_POPULATE), the file read into it, and JavaScript gets
// both views of the same bytes without a copy: an external Buffer and an external Latin-1 string
// (node_api_create_external_string_latin1, where this Node has it; else the string is a copy).
#pragma once
#include <napi.h>

namespace iptlb {

// readText(fd: number, size: number): { text: string, bytes: Buffer } | null, synchronous. `fd` is read
// from offset 0 (pread: the descriptor's offset is left alone); `size` is the file's size from its
// fstat, 1 to 64 MiB. null when the file holds more than `size` bytes (it grew since) or when this
// runtime refuses external memory: the caller then reads it the usual way. Fewer bytes are fine (it
// shrank: the bytes read). A read error throws an Error whose `code` is the errno's name ("EIO"; the
// message names it in any case). Bad arguments: a TypeError naming the field.
Napi::Value ReadText(const Napi::CallbackInfo &info);

}  // namespace iptlb
