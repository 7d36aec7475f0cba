/**
 * clnvault's own backup format ("v2"). The code lives in v2/ by concern: codec.ts (constants, file and
 * record headers, change payloads), io.ts (bounded read windows), scan.ts (validating records, recovery
 * scan, file header check), group.ts (chunked snapshots as entries), writer.ts and reader.ts. This barrel
 * keeps one import path for the rest of the code.
 */
export {
  changePayloadLength,
  changeStatementsAt,
  decodeChangePayload,
  encodeChangeRecord,
  encodeChangeRecordInto,
  encodeFileHeader,
  FILE_HEADER_LEN,
  FILE_MAGIC,
  FLAG_DEFLATE,
  FLAG_ENCRYPTED,
  FILE_FLAG_ENCRYPTED,
  type FileEncryption,
  FORMAT_VERSION,
  isV2,
  RECORD_HEADER_LEN,
  RECORD_MAGIC,
  RECORD_OVERHEAD,
  RECORD_TRAILER_LEN,
  SEAL_RECORD_LEN,
  TYPE_CHANGE,
  TYPE_SEAL,
  TYPE_SNAPSHOT,
  TYPE_SNAPSHOT_PART,
  MIN_FORMAT_VERSION,
  PREALLOC_VERSION,
  parseRecordHeader,
  readU64,
  type RecordHeader,
  recordSeed,
  recordSeedOf,
  resealRecordHeader,
  seedOfRecordHeader,
  encodeSealRecord,
  decodeSealRecord,
  type Seal,
} from './v2/codec.js';
export { liveSeal, sealAtEnd, type RecordInfo } from './v2/scan.js';
export { RESERVE_MAX, RESERVE_MIN } from './v2/reserve.js';
export { Grouper, groupRecords, type GroupedEntry, type Grouping } from './v2/group.js';
export { createV2, RawRecordError, type RawSource, V2Writer, type V2OpenStats, type V2WriterOptions } from './v2/writer.js';
export { damagedError, entryAt, snapshotEntry, V2Reader, WalkGrouper, type WalkedEntry } from './v2/reader.js';
