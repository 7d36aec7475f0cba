import { fileURLToPath } from 'node:url';

/**
 * The recorded fixtures (Core Lightning sessions, the reference plugin's backups and socket transcript)
 * live in the repository at test/fixtures/, so a clone with nothing beside it runs every test. Found
 * relative to this file: the compiled helper sits at dist/test/helpers/, the data at test/fixtures/.
 * CLNVAULT_FIXTURES overrides (e.g. to try a new recording before committing it).
 */
export const FIXTURES = process.env.CLNVAULT_FIXTURES ?? fileURLToPath(new URL('../../../test/fixtures', import.meta.url));
