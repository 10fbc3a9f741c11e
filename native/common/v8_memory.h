// Asking V8 to give its heap's slack back after a large change (see v8_memory.cc).
#pragma once

namespace iptlb {

// v8::Isolate::MemoryPressureNotification on the current isolate, when the running Node exports it,
// then back to no pressure (V8 otherwise keeps saving memory at the cost of more GCs for good):
//  - moderate (1): V8 starts an incremental, memory-reducing mark-compact; its pauses are those of
//    incremental marking, and its end shrinks the heap to what is live;
//  - critical (2): a memory-reducing full GC (a second one when much is still free), synchronously.
// Call on the JS thread. Returns false when the symbols are not there (another runtime), doing nothing.
bool MemoryPressure(int level);

}  // namespace iptlb
