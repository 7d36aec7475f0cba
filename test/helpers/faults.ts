/** Arming the I/O faults of fault-preload.ts in a plugin started with faultEnv(). */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const PRELOAD = new URL('./fault-preload.js', import.meta.url);

export interface FaultSpec {
  from?: 'rename' | 'compacting' | 'segment';
  thread?: 'worker' | 'main';
  /** count only the calls of this node:fs function */
  call?: string;
  /** the Nth counted fs call fails; 0: none */
  at: number;
}

/** Env for a plugin whose compaction worker fails one fs call as `specFile` says (re-read at each compaction). */
export function faultEnv(specFile: string): NodeJS.ProcessEnv {
  writeFileSync(specFile, JSON.stringify({ at: 0 }));
  const prior = process.env.NODE_OPTIONS ? `${process.env.NODE_OPTIONS} ` : '';
  return { NODE_OPTIONS: `${prior}--import=${PRELOAD.href}`, CLNVAULT_FAULT_FILE: specFile };
}

export function armFault(specFile: string, spec: FaultSpec): void {
  rmSync(`${specFile}.fired`, { force: true });
  writeFileSync(specFile, JSON.stringify({ ...spec, nonce: `${Date.now()}-${Math.random()}` }));
}

/** The call that failed since the last armFault, or null when the fault did not fire. */
export interface FaultFired {
  call: string;
  arg: string | null;
  /** the compaction had renamed its new file over the backup when the call failed */
  afterRename: boolean;
}

export function faultFired(specFile: string): FaultFired | null {
  const f = `${specFile}.fired`;
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as FaultFired) : null;
}
