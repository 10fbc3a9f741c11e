#!/usr/bin/env node
'use strict';
// The CLI bundle (dist/iptlb.cjs, made by `npm run build`): one file, compiled with the code cache
// written next to it at build time, so start-up costs about as much as Node itself.
const path = require('node:path');
require('./load-bundle.cjs')
  .loadBundle(path.join(__dirname, '..', 'dist', 'iptlb.cjs'))
  .main(process.argv.slice(2))
  .then((code) => {
    // Everything main() started has finished (and stdout/stderr writes are synchronous on Linux for
    // files, pipes and terminals): exit now rather than tear the whole runtime down first.
    process.exit(code);
  });
