#!/usr/bin/env node
'use strict';
// The CLI bundle (dist/iptlb.cjs, made by `npm run build`): one file, compiled with the code cache
// written next to it at build time, so that V8 does not compile again what the cached commands ran.
const path = require('node:path');
// The CLI writes its lines straight to fd 1 and 2 (src/cli/stdio.ts) and creates process.stdout or
// process.stderr only when that fails: note which ones exist, so that the exit below waits for those
// and does not create the others just to look at them.
const opened = [];
for (const name of ['stdout', 'stderr']) {
  const d = Object.getOwnPropertyDescriptor(process, name);
  if (!d || !d.get || !d.configurable) {
    opened.push(process[name]);
    continue;
  }
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: d.enumerable,
    get() {
      const stream = d.get.call(process);
      if (!opened.includes(stream)) opened.push(stream);
      return stream;
    },
  });
}
require('./load-bundle.cjs')
  .loadBundle(path.join(__dirname, '..', 'dist', 'iptlb.cjs'))
  .main(process.argv.slice(2))
  .then((code) => {
    // Everything main() started has finished. A write to a pipe that was full (a slow reader: more
    // than the pipe's 64 KiB buffered) is still queued in the stream: exit only once stdout and
    // stderr have handed every byte to the kernel. When nothing is queued (the common case), exit now
    // rather than tear the whole runtime down first.
    process.exitCode = code;
    const pending = opened.filter((s) => s.writableLength > 0 && !s.destroyed);
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
