#!/usr/bin/env node
'use strict';
// The CLI bundle (dist/iptlb.cjs, made by `npm run build`): one file, compiled with the code cache
// written next to it at build time, so start-up costs about as much as Node itself.
const path = require('node:path');
require('./load-bundle.cjs')
  .loadBundle(path.join(__dirname, '..', 'dist', 'iptlb.cjs'))
  .main(process.argv.slice(2))
  .then((code) => {
    // Everything main() started has finished. A write to a pipe that was full (a slow reader: more
    // than the pipe's 64 KiB buffered) is still queued in the stream: exit only once stdout and
    // stderr have handed every byte to the kernel. When nothing is queued (the common case), exit now
    // rather than tear the whole runtime down first.
    process.exitCode = code;
    const pending = [process.stdout, process.stderr].filter((s) => s.writableLength > 0 && !s.destroyed);
    if (pending.length === 0) process.exit(code);
    let left = pending.length;
    for (const s of pending) {
      const done = () => {
        s.removeListener('drain', done);
        s.removeListener('error', done);
        s.removeListener('close', done);
        if (--left === 0) process.exit(code);
      };
      s.once('drain', done);
      s.once('error', done); // EPIPE: the reader went away; nothing more can be delivered
      s.once('close', done);
    }
  });
