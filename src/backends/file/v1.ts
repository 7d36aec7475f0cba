/**
 * The reference plugin's FileBackend format ("file_version 1"), read and written byte-compatibly (see
 * docs/format-v1.md). The code lives in v1/ by concern: header.ts (the 512-byte header, constants,
 * creating an empty backup), scan.ts (checking every entry, finding the acknowledged end), reader.ts and
 * writer.ts. This barrel keeps one import path for the rest of the code.
 */
export { createV1, isV1, readV1Header, V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE, type V1Header, writeV1Header } from './v1/header.js';
export { V1Reader } from './v1/reader.js';
export { V1Writer } from './v1/writer.js';
