#!/usr/bin/env node
// Classify PNG images with a cnnc model exported with `--input uint8`, from Node.js:
//
//     cnnc export RUN_DIR -o model.onnx --input uint8 --outputs probabilities --top-k 3
//     node classify.js model.onnx digit.png [more.png ...] [--top-k K] [--json]
//
// The model takes decoded pixels as they are (uint8, N x H x W x C) and does its own preprocessing,
// so this program only decodes the PNG, converts it to grayscale or RGB as the model needs, and
// reads the labels from the model's metadata. Its output matches `cnnc predict` (and `--json` its
// JSON form), so the two can be compared.
'use strict';

const fs = require('node:fs');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');

function usage(message) {
  process.stderr.write(`error: ${message}\nusage: node classify.js MODEL.onnx IMAGE.png... [--top-k K] [--json]\n`);
  process.exit(2);
}

function parseArguments(argv) {
  const options = { topK: 1, json: false, files: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--json') options.json = true;
    else if (argv[i] === '--top-k') {
      options.topK = Number(argv[++i]);
      if (!Number.isInteger(options.topK) || options.topK < 1) usage('--top-k takes a positive integer');
    } else options.files.push(argv[i]);
  }
  if (options.files.length < 2) usage('give a model and at least one PNG image');
  [options.model, ...options.images] = options.files;
  return options;
}

// --- the model's metadata_props, read from the ONNX protobuf (onnxruntime's JS API does not expose them)

function readVarint(bytes, state) {
  let value = 0;
  let factor = 1;
  for (;;) {
    const byte = bytes[state.at++];
    value += (byte & 0x7f) * factor;  // arithmetic, not <<, so that values above 2^31 stay exact
    if (byte < 0x80) return value;
    factor *= 128;
  }
}

// The fields of one protobuf message: [fieldNumber, bytes] for length-delimited ones (others skipped).
function* fields(bytes) {
  const state = { at: 0 };
  while (state.at < bytes.length) {
    const key = readVarint(bytes, state);
    const wireType = key % 8;
    const field = Math.floor(key / 8);
    if (wireType === 0) readVarint(bytes, state);
    else if (wireType === 1) state.at += 8;
    else if (wireType === 5) state.at += 4;
    else if (wireType === 2) {
      const length = readVarint(bytes, state);
      yield [field, bytes.subarray(state.at, state.at + length)];
      state.at += length;
    } else throw new Error(`unsupported protobuf wire type ${wireType}`);
  }
}

const METADATA_PROPS = 14;  // ModelProto.metadata_props: StringStringEntryProto {key = 1, value = 2}

function readMetadata(modelBytes) {
  const metadata = {};
  for (const [field, entry] of fields(modelBytes)) {
    if (field !== METADATA_PROPS) continue;
    const pair = {};
    for (const [part, text] of fields(entry)) pair[part] = Buffer.from(text).toString('utf8');
    metadata[pair[1]] = pair[2] ?? '';
  }
  return metadata;
}

// --- images

// Pillow's RGB -> L conversion (ITU-R 601-2 luma, in its fixed-point arithmetic), so that the pixels
// are the ones `cnnc predict` reads.
function luma(r, g, b) {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

function readPixels(path, [channels, height, width]) {
  const png = PNG.sync.read(fs.readFileSync(path));  // always RGBA, 8 bits per channel
  if (png.height !== height || png.width !== width) {
    throw new Error(`image ${path} is ${png.height}x${png.width} (height x width) but the model takes ${height}x${width} images`);
  }
  const pixels = new Uint8Array(height * width * channels);
  for (let i = 0; i < height * width; i++) {
    const [r, g, b] = png.data.subarray(4 * i, 4 * i + 3);
    if (channels === 1) pixels[i] = luma(r, g, b);
    else pixels.set([r, g, b], 3 * i);
  }
  return pixels;
}

// --- classification

function softmax(row) {
  const top = Math.max(...row);
  const exps = row.map((value) => Math.exp(value - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((value) => value / total);
}

// The k best (index, score) pairs of a row, best first; ties go to the lower index, as in cnnc.
function ranked(scores, k) {
  return [...scores.keys()].sort((a, b) => scores[b] - scores[a] || a - b).slice(0, k).map((i) => [i, scores[i]]);
}

async function main() {
  const options = parseArguments(process.argv.slice(2));
  const modelBytes = fs.readFileSync(options.model);
  const metadata = readMetadata(modelBytes);
  if (metadata['cnnc.input'] !== 'uint8') {
    throw new Error(`${options.model} takes normalised float32 input; export it with: cnnc export RUN_DIR -o MODEL --input uint8`);
  }
  const labels = JSON.parse(metadata['cnnc.labels']);
  const shape = JSON.parse(metadata['cnnc.input_shape']);  // [C, H, W]
  const [channels, height, width] = shape;
  const session = await ort.InferenceSession.create(modelBytes);

  const batch = new Uint8Array(options.images.length * height * width * channels);
  options.images.forEach((path, i) => batch.set(readPixels(path, shape), i * height * width * channels));
  const input = new ort.Tensor('uint8', batch, [options.images.length, height, width, channels]);
  const outputs = await session.run({ [session.inputNames[0]]: input });
  const scores = outputs[session.outputNames[0]].data;  // output 0: N x classes
  const classes = scores.length / options.images.length;

  // A model exported with --top-k K and --outputs probabilities has done the ranking itself.
  const inGraph = metadata['cnnc.output'] === 'probabilities' && Number(metadata['cnnc.top_k'] ?? 0) >= options.topK;
  const predictions = options.images.map((path, i) => {
    let best;
    if (inGraph) {
      const k = Number(metadata['cnnc.top_k']);
      const indices = outputs[session.outputNames[2]].data.subarray(i * k, i * k + options.topK);  // int64: BigInt
      const values = outputs[session.outputNames[1]].data.subarray(i * k, i * k + options.topK);
      best = Array.from(indices, (index, j) => ({ label: labels[Number(index)], score: values[j] }));
    } else {
      let row = Array.from(scores.subarray(i * classes, (i + 1) * classes));
      if (metadata['cnnc.output'] !== 'probabilities') row = softmax(row);
      best = ranked(row, options.topK).map(([index, score]) => ({ label: labels[index], score }));
    }
    return { input: path, label: best[0].label, score: best[0].score, top_k: best };
  });
  if (options.json) {
    process.stdout.write(JSON.stringify(predictions, null, 2) + '\n');
  } else {
    const width_ = Math.max(...predictions.map((p) => p.input.length));
    for (const p of predictions) {
      let line = `${p.input.padEnd(width_)}  ${p.label}  (${p.score.toFixed(3)})`;
      if (p.top_k.length > 1) line += `  top ${p.top_k.length}: ` + p.top_k.map((t) => `${t.label} ${t.score.toFixed(3)}`).join(', ');
      process.stdout.write(line + '\n');
    }
  }
}

main().catch((error) => {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(1);
});
