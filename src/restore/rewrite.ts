/**
 * CLN before lightning PR 4090 (fixed in 011590b20, 2020-09) expanded two bound parameters without the
 * space before WHERE, so backups of that era hold statements such as `reserved_til=174WHERE ...` that do
 * not parse. The reference restore repairs exactly these two shapes (reference-plugin.md §4.3); so do we,
 * and nothing else: every other statement runs verbatim.
 */

const RESERVED_TIL = /reserved_til=(\d+)WHERE/g;
const PEER_ID = /peer_id=(\d+)WHERE channels\.id=/g;

/**
 * Both patterns need a digit immediately followed by `WHERE`, which a correctly expanded statement never
 * has; indexOf scans far faster than the regexes, and restore runs this on every statement.
 */
function hasDigitBeforeWhere(s: string): boolean {
  let i = s.indexOf('WHERE', 1);
  while (i > 0) {
    const c = s.charCodeAt(i - 1);
    if (c >= 48 && c <= 57) return true;
    i = s.indexOf('WHERE', i + 5);
  }
  return false;
}

export function rewriteStatement(s: string): string {
  if (!hasDigitBeforeWhere(s)) return s;
  return s.replace(RESERVED_TIL, 'reserved_til=$1 WHERE').replace(PEER_ID, 'peer_id=$1 WHERE channels.id=');
}
