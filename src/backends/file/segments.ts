/**
 * Segments: a v2 backup split into files no larger than a configured size (docs/format-v2.md, "Segments").
 * The code lives in segments/ by concern: layout.ts (segment headers, names, discovery, seals, the size
 * limit), writer.ts, reader.ts and source.ts (the virtual file compaction reads). This barrel keeps one
 * import path for the rest of the code.
 */
export {
  DEFAULT_SEGMENT_BYTES,
  discoverSegments,
  encodeSegmentHeader,
  listSegmentFiles,
  MIN_SEGMENT_BYTES,
  parseSegmentBytes,
  readSegmentBytes,
  readSegmentHeader,
  sealOf,
  type SegmentedWriterOptions,
  type SegmentFile,
  type SegmentHeader,
  segmentPath,
  type SegmentSet,
  withNewSetId,
} from './segments/layout.js';
export { SegmentedWriter } from './segments/writer.js';
export { SegmentedReader } from './segments/reader.js';
export { SegmentedSource } from './segments/source.js';
