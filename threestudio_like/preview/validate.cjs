// Validate one glTF/GLB file with the Khronos glTF validator and print its JSON report.
// Usage: node validate.cjs <gltf-validator package folder> <file> [max issues]
// External resources (.bin, textures) are read relative to the file; none outside its folder.
'use strict';
const fs = require('fs');
const path = require('path');

const [packageDir, file, maxIssues] = process.argv.slice(2);
const validator = require(packageDir);
const root = path.dirname(path.resolve(file));

function readResource(uri) {
  const target = path.resolve(root, decodeURIComponent(uri));
  if (path.relative(root, target).startsWith('..')) {
    return Promise.reject(new Error(`resource outside the asset's folder: ${uri}`));
  }
  return fs.promises.readFile(target).then((data) => new Uint8Array(data));
}

validator
  .validateBytes(new Uint8Array(fs.readFileSync(file)), {
    uri: path.basename(file),
    maxIssues: Number(maxIssues || 0),
    externalResourceFunction: readResource,
  })
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((err) => {
    // the validator rejects data it cannot even recognise as glTF: an error of the file
    const message = String(err && err.message ? err.message : err);
    process.stdout.write(JSON.stringify({
      uri: path.basename(file),
      issues: { numErrors: 1, numWarnings: 0, numInfos: 0, numHints: 0,
                messages: [{ code: 'UNREADABLE_GLTF', message, severity: 0, pointer: '/' }] },
    }));
  });
