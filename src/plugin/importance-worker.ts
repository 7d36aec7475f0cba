import { workerData, type MessagePort } from 'node:worker_threads';
import { findImportance, importanceLog } from './importance.js';

/**
 * Asks lightningd whether clnvault was loaded with important-plugin= (importance.ts), off the main
 * thread: the main thread blocks in read(2) on stdin and picks the answer up with receiveMessageOnPort
 * when it next handles a message.
 */
const data = workerData as { port: MessagePort; rpcFile?: string; lightningDir?: string; self: string; timeoutMs?: number };
const r = await findImportance(data.rpcFile, data.lightningDir, data.self, data.timeoutMs);
data.port.postMessage({ result: r, log: importanceLog(r) });
data.port.close();
