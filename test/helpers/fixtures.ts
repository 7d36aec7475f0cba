import { fileURLToPath } from 'node:url';

/**
 * The recorded fixtures live in shared/ beside the repository (CI clones the repo next to a copy of
 * it), so they are found relative to this file, never by an absolute path. CLNVAULT_FIXTURES overrides.
 */
export const FIXTURES = process.env.CLNVAULT_FIXTURES ?? fileURLToPath(new URL('../../../../shared/fixtures', import.meta.url));
