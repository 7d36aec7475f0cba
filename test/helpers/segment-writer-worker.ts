/**
 * A worker thread that appends to the segmented backup `workerData.path` with the real writer, one
 * change every `workerData.everyMs` (each durable, as the plugin's), rolling over its small segments,
 * until the parent sets `workerData.stop[0]`. Posts the number of segment files it started.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { SegmentedWriter } from '../../src/backends/file/segments.js';

// `node --test dist/test/` runs every file below it, this one too: as a main module it does nothing
if (!isMainThread) {
  const { path, segmentBytes, everyMs, stop } = workerData as { path: string; segmentBytes: number; everyMs: number; stop: Int32Array };
  const w = SegmentedWriter.open(path, { segmentBytes });
  const first = w.segmentFiles().length;
  let v = 0;
  while (Atomics.load(stop, 0) === 0) {
    Atomics.wait(stop, 0, 0, everyMs);
    // record sizes vary, so that roll-overs fall at every distance from the segment's limit
    w.appendChange(++v, [`INSERT INTO t VALUES (${v}, '${'x'.repeat(1000 + ((v * 7919) % 9000))}')`]);
    w.prepare();
  }
  const rolled = w.segmentFiles().length - first;
  w.close();
  parentPort!.postMessage({ rolled, versions: v });
}
