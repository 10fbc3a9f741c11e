// Giving freed memory back to the kernel: fixed malloc thresholds (at addon load) and a deferred
// malloc_trim once native work has been quiet for a while. Each addon part that does large or many
// allocations off the JS thread (iptlb_xt: libiptc's copies of the table; iptlb_nft: the batch of a
// transaction and the decoded view of a read) links this file.
#pragma once

namespace iptlb {

// Gives the memory that freed work leaves in malloc's free lists (of every arena, the worker
// threads' included) back to the kernel: malloc_trim(0) on a background thread ("iptlb-trim") once
// no Poke has come for 250 ms. Call it after the work's memory is freed, or about to be.
void ReleaseFreedMemory();

// Fixed malloc mmap/trim thresholds for the process (call at addon load): glibc otherwise raises its
// mmap threshold to the size of every large block freed (up to 32 MiB), after which large buffers
// are carved from an arena's heap and stay resident once freed. Fixed at 2 MiB: a table copy of a
// few hundred profiles (~300 KiB at 200) is reused from the heap commit after commit instead of
// being mapped and faulted in afresh each time (about 15 % of a commit's kernel time under churn);
// the deferred trim gives it back once the work is quiet. Larger copies get their own mappings.
void FixMallocThresholds();

}  // namespace iptlb
