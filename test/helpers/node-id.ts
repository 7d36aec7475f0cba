import { createECDH, hkdfSync } from 'node:crypto';

/**
 * The node id as Core Lightning's hsmd derives it from the node's 32-byte secret (hsmd/libhsmd.c;
 * tools/hsmtool.c getnodeid): private key = HKDF-SHA256(secret, salt = a u32 counter from 0, little
 * endian, info "nodeid"), the counter moving on only if that is not a valid secp256k1 scalar.
 * Written from that description with Node's crypto, independently of the code under test.
 */
export function nodeIdOf(secret: Buffer): string {
  for (let salt = 0; ; salt++) {
    const s = Buffer.alloc(4);
    s.writeUInt32LE(salt);
    const priv = Buffer.from(hkdfSync('sha256', secret, s, 'nodeid', 32));
    try {
      const ecdh = createECDH('secp256k1');
      ecdh.setPrivateKey(priv);
      return ecdh.getPublicKey('hex', 'compressed');
    } catch {
      // not a valid scalar (about 1 in 2^128): hsmd tries the next salt
    }
  }
}
