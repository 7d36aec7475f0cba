/**
 * Key sources for encrypted backups (src/crypto/keys.ts), on real files: the hsm_secret files a real
 * lightningd v26.06.6 wrote (test/fixtures/keys/, node ids from its getinfo), BIP39 words, key files and
 * passphrases; and `clnvault keygen` run as a process. The same derivation against a live lightningd is
 * test/keys-lightningd.test.ts.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { scryptSync } from 'node:crypto';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  hsmSecretLayout,
  KeyError,
  keyFromHsmSecret,
  keyFromKeyFile,
  keyFromMnemonic,
  keyFromMnemonicFile,
  keyFromPassphrase,
  newPassphraseParams,
  writeKeyFile,
  type PassphraseParams,
} from '../src/crypto/keys.js';
import { nodeSecretFromHsmSecret } from '../src/crypto/keys/hsm-secret.js';
import { nodeSecretFromMnemonic } from '../src/crypto/keys/from-words.js';
import { bip39Seed } from '../src/crypto/keys/mnemonic.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { nodeIdOf } from './helpers/node-id.js';

interface Case {
  file: string;
  layout: string;
  words: string | null;
  passphrase: string | null;
  nodeId: string;
  fingerprint: string;
}
const KEYS = join(FIXTURES, 'keys');
const CASES = (JSON.parse(readFileSync(join(KEYS, 'cases.json'), 'utf8')) as { cases: Case[] }).cases;
const area = scratchArea('clnvault-keys-');
after(() => area.cleanup());

/** Runs f, expects a KeyError, returns its message after checking it is one line. */
function keyError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof KeyError, `expected a KeyError, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    messages.push(e.message);
    return e.message;
  }
  assert.fail('expected a KeyError');
}
const messages: string[] = [];

function tmpFile(name: string, bytes: Buffer | string, mode = 0o600): string {
  const p = join(area.dir(), name);
  writeFileSync(p, bytes, { mode });
  chmodSync(p, mode);
  return p;
}

describe('hsm_secret files recorded from lightningd v26.06.6', () => {
  for (const c of CASES) {
    test(`${c.layout}: node id, key and fingerprint`, () => {
      const path = join(KEYS, c.file);
      const pass = c.passphrase ?? undefined;
      assert.equal(hsmSecretLayout(path), c.layout);
      // the 32-byte secret we take is the one hsmd takes: it gives the node id lightningd reported
      assert.equal(nodeIdOf(nodeSecretFromHsmSecret(path, pass)), c.nodeId);
      const k = keyFromHsmSecret(path, pass);
      assert.equal(k.kind, 'node-seed');
      assert.equal(k.key.length, 32);
      assert.match(k.fingerprint, /^[0-9a-f]{16}$/);
      // pinned: the HKDF labels are part of the format
      assert.equal(k.fingerprint, c.fingerprint);
      // the backup key is not a key the node uses, nor its secret
      assert.notDeepEqual(k.key, nodeSecretFromHsmSecret(path, pass));
      if (c.words !== null) {
        assert.equal(nodeIdOf(nodeSecretFromMnemonic(c.words, pass)), c.nodeId);
        const w = keyFromMnemonic(c.words, pass);
        assert.deepEqual(w.key, k.key, 'the words alone give the same key as the hsm_secret');
        assert.equal(w.fingerprint, k.fingerprint);
        assert.equal(w.kind, 'node-seed');
        // as an operator may type or keep them: capitals, extra spaces, one word a line, a comment
        const messy = `  ${c.words.toUpperCase().split(' ').join('  \n')}\n`;
        assert.deepEqual(keyFromMnemonic(messy, pass).key, k.key);
        const file = tmpFile('words.txt', `# my node's words\n${c.words.split(' ').join('\n')}\n`);
        assert.deepEqual(keyFromMnemonicFile(file, pass).key, k.key);
      }
    });
  }

  test('passphrase-protected words: missing, wrong and NFKD-normalised passphrases are refused', () => {
    const c = CASES.find((x) => x.layout === 'mnemonic-passphrase')!;
    const path = join(KEYS, c.file);
    assert.match(keyError(() => keyFromHsmSecret(path)), /protected by a BIP39 passphrase.*give it too, or use a key file/);
    assert.match(keyError(() => keyFromHsmSecret(path, '')), /protected by a BIP39 passphrase/);
    assert.match(keyError(() => keyFromHsmSecret(path, 'correct horse cafe')), /wrong BIP39 passphrase/);
    // lightningd hashed the passphrase as typed (NFC é); BIP39's NFKD form is another passphrase to it
    assert.notEqual(c.passphrase!.normalize('NFKD'), c.passphrase);
    assert.match(keyError(() => keyFromHsmSecret(path, c.passphrase!.normalize('NFKD'))), /wrong BIP39 passphrase/);
    assert.ok(messages.every((m) => m.includes(path)));
  });

  test('a passphrase given for a secret that has none is refused', () => {
    for (const layout of ['plain', 'mnemonic']) {
      const c = CASES.find((x) => x.layout === layout)!;
      assert.match(keyError(() => keyFromHsmSecret(join(KEYS, c.file), 'something')), /give none/);
    }
  });
});

describe('BIP39', () => {
  test('seed matches the BIP39 reference vector (Trezor, passphrase "TREZOR")', () => {
    const seed = bip39Seed('abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about', 'TREZOR');
    assert.equal(
      seed.toString('hex'),
      'c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04',
    );
    const seed24 = bip39Seed('letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless', 'TREZOR');
    assert.equal(
      seed24.toString('hex'),
      'c0c519bd0e91a2ed54357d9d1ebef6f5af218a153624cf4f2da911a0ed8f7a09e2ef61af0aca007096df430022f7a2b6fb91661a9589097069720d015e4e982f',
    );
  });

  test('wrong word count, unknown word and bad checksum are refused without echoing the words', () => {
    const words = CASES.find((x) => x.layout === 'mnemonic')!.words!.split(' ');
    assert.match(keyError(() => keyFromMnemonic(words.slice(0, 11).join(' '))), /11 words; a BIP39 mnemonic has 12, 15, 18, 21 or 24 words/);
    assert.match(keyError(() => keyFromMnemonic('')), /0 words/);
    const typo = [...words];
    typo[6] = `${typo[6]}x`;
    assert.match(keyError(() => keyFromMnemonic(typo.join(' '))), /word 7 \(counting from 1\) is not in the BIP39 English word list/);
    const swapped = [...words];
    [swapped[10], swapped[11]] = [swapped[11]!, swapped[10]!];
    assert.match(keyError(() => keyFromMnemonic(swapped.join(' '))), /checksum does not match/);
    assert.match(keyError(() => keyFromMnemonic('a '.repeat(2000))), /too long/);
    const m = keyError(() => keyFromMnemonic(typo.join(' '), undefined, '--mnemonic'));
    assert.ok(m.startsWith('--mnemonic: '), m);
  });
});

describe('hsm_secret files clnvault cannot use', () => {
  test('the 73-byte encrypted layout says a key file is needed and how to make one', () => {
    const p = tmpFile('hsm_secret', Buffer.alloc(73, 7), 0o400);
    assert.equal(hsmSecretLayout(p), 'encrypted');
    const m = keyError(() => keyFromHsmSecret(p));
    assert.ok(m.startsWith(`${p} is an encrypted hsm_secret (73 bytes`), m);
    assert.match(m, /clnvault keygen KEYFILE/);
    assert.match(m, /--key-file KEYFILE/);
    // with a passphrase too: clnvault does not decrypt it (argon2id + secretstream are lightningd's business)
    assert.match(keyError(() => keyFromHsmSecret(p, 'a passphrase')), /encrypted hsm_secret/);
  });

  test('wrong sizes, random bytes, damaged words, a directory and a missing file', () => {
    assert.match(keyError(() => keyFromHsmSecret(tmpFile('hsm_secret', Buffer.alloc(0)))), /0 bytes: too short for a Core Lightning hsm_secret/);
    assert.match(keyError(() => keyFromHsmSecret(tmpFile('hsm_secret', Buffer.alloc(31, 1)))), /31 bytes: too short/);
    assert.match(keyError(() => keyFromHsmSecret(tmpFile('hsm_secret', Buffer.alloc(64 * 1024, 1)))), /65536 bytes: too large/);
    const random = Buffer.alloc(100);
    for (let i = 0; i < random.length; i++) random[i] = (i * 151 + 7) & 0xff;
    assert.match(keyError(() => keyFromHsmSecret(tmpFile('hsm_secret', random))), /not a Core Lightning hsm_secret/);
    const words = CASES.find((x) => x.layout === 'mnemonic')!.words!;
    const damaged = Buffer.concat([Buffer.alloc(32), Buffer.from(words.replace(/^board/, 'beard'))]);
    assert.match(keyError(() => keyFromHsmSecret(tmpFile('hsm_secret', damaged))), /word 1 \(counting from 1\) is not in the BIP39 English word list/);
    assert.match(keyError(() => keyFromHsmSecret(area.dir('adir'))), /is a directory/);
    assert.match(keyError(() => keyFromHsmSecret(join(area.root, 'nope', 'hsm_secret'))), /no such file.*until lightningd's first start.*or use a key file/);
    assert.match(keyError(() => keyFromKeyFile(join(area.root, 'nope.key'))), /no such file \(expected a clnvault key file.*\); check the path$/);
  });
});

describe('key files', () => {
  test('writeKeyFile: mode 0600, never overwrites, reads back as the same key', () => {
    const p = join(area.dir(), 'backup.key');
    const k = writeKeyFile(p);
    assert.equal(k.kind, 'key-file');
    assert.equal(statSync(p).mode & 0o777, 0o600);
    const text = readFileSync(p, 'utf8');
    assert.match(text, new RegExp(`^# fingerprint: ${k.fingerprint}$`, 'm'));
    assert.match(text, new RegExp(`^clnvault-key-v1 ${k.key.toString('hex')}$`, 'm'));
    const r = keyFromKeyFile(p);
    assert.deepEqual(r.key, k.key);
    assert.equal(r.fingerprint, k.fingerprint);
    assert.equal(r.kind, 'key-file');
    assert.match(keyError(() => writeKeyFile(p)), /already exists: a key file is never overwritten/);
    assert.equal(readFileSync(p, 'utf8'), text, 'the existing key is untouched');
    // nor through a symlink planted at the path
    const link = join(area.dir(), 'link.key');
    symlinkSync(join(area.root, 'elsewhere.key'), link);
    assert.match(keyError(() => writeKeyFile(link)), /already exists/);
    assert.equal(existsSync(join(area.root, 'elsewhere.key')), false);
    assert.notDeepEqual(writeKeyFile(join(area.dir(), 'other.key')).key, k.key);
    assert.match(keyError(() => writeKeyFile(join(area.root, 'no', 'such', 'dir.key'))), /directory does not exist/);
  });

  test('a known key file gives its pinned fingerprint; hand-made files without a fingerprint line are read', () => {
    const hex = '11'.repeat(32);
    const p = tmpFile('known.key', `# fingerprint: 1e7234797b39845c\nclnvault-key-v1 ${hex}\n`);
    const k = keyFromKeyFile(p);
    assert.equal(k.fingerprint, '1e7234797b39845c');
    assert.equal(k.key.toString('hex'), hex);
    assert.equal(keyFromKeyFile(tmpFile('bare.key', `clnvault-key-v1 ${hex.toUpperCase()}\r\n`)).fingerprint, '1e7234797b39845c');
  });

  test('group- or world-accessible, damaged, foreign or oversized key files are refused', () => {
    const p = join(area.dir(), 'k.key');
    const k = writeKeyFile(p);
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      chmodSync(p, mode);
      const m = keyError(() => keyFromKeyFile(p));
      assert.match(m, new RegExp(`mode 0${mode.toString(8)}\\): run 'chmod 600 ${p}'`));
    }
    chmodSync(p, 0o400);
    assert.equal(keyFromKeyFile(p).fingerprint, k.fingerprint, '0400 is fine');
    const text = readFileSync(p, 'utf8');
    const flipped = text.replace(/clnvault-key-v1 (.)/, (_, c: string) => `clnvault-key-v1 ${c === '0' ? '1' : '0'}`);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('flipped.key', flipped))), /damaged: its key does not match its fingerprint line/);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('short.key', 'clnvault-key-v1 abcd\n'))), /not a clnvault key file/);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('raw.key', Buffer.alloc(32, 9)))), /not a clnvault key file/);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('none.key', '# nothing\n'))), /no 'clnvault-key-v1' line/);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('two.key', `${text}${text}`))), /more than one/);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('big.key', 'x'.repeat(5000)))), /5000 bytes: too large/);
    // an hsm_secret given where a key file is expected
    const hsm = join(KEYS, CASES[0]!.file);
    assert.match(keyError(() => keyFromKeyFile(tmpFile('hsm.key', readFileSync(hsm)))), /not a clnvault key file/);
  });
});

describe('passphrase (scrypt)', () => {
  const fixed: PassphraseParams = { salt: Buffer.alloc(16, 1), N: 1 << 14, r: 8, p: 1 };

  test('default parameters: 64 MiB of memory, fresh 16-byte salts', () => {
    const a = newPassphraseParams();
    const b = newPassphraseParams();
    assert.deepEqual({ N: a.N, r: a.r, p: a.p }, { N: 65536, r: 8, p: 1 });
    assert.equal(128 * a.N * a.r, 64 * 1024 * 1024);
    assert.equal(a.salt.length, 16);
    assert.notDeepEqual(a.salt, b.salt);
    const k = keyFromPassphrase('correct horse battery staple', a);
    assert.equal(k.kind, 'passphrase');
    assert.deepEqual(keyFromPassphrase('correct horse battery staple', a).key, k.key);
    assert.notDeepEqual(keyFromPassphrase('correct horse battery staple', b).key, k.key);
  });

  test('is scrypt itself, pinned, and NFKD-normalised', () => {
    const k = keyFromPassphrase('correct horse battery staple', fixed);
    assert.deepEqual(k.key, scryptSync('correct horse battery staple', fixed.salt, 32, { N: fixed.N, r: 8, p: 1 }));
    assert.equal(k.fingerprint, '563309423926ad69');
    assert.deepEqual(keyFromPassphrase('mot de passe café', fixed).key, keyFromPassphrase('mot de passe café'.normalize('NFKD'), fixed).key);
    assert.notDeepEqual(keyFromPassphrase('correct horse battery stapl', fixed).key, k.key);
  });

  test('short passphrases and out-of-bounds parameters (a hostile header) are refused before any work', () => {
    assert.match(keyError(() => keyFromPassphrase('short', fixed)), /too short \(8 characters at least\)/);
    assert.match(keyError(() => keyFromPassphrase('', fixed)), /too short/);
    const pw = 'correct horse battery staple';
    const bad: Array<[Partial<PassphraseParams>, RegExp]> = [
      [{ N: 1 << 30 }, /N 1073741824/],
      [{ N: 1 << 10 }, /N 1024/],
      [{ N: 65535 }, /N 65535/],
      [{ r: 1000 }, /r 1000/],
      [{ r: 0 }, /r 0/],
      [{ p: 1 << 20 }, /p 1048576/],
      [{ N: 1 << 16, r: 16 }, /128 \* N \* r/],
      [{ salt: Buffer.alloc(4) }, /salt of 4 bytes/],
      [{ N: 1.5 }, /N 1.5/],
    ];
    for (const [change, re] of bad) {
      const m = keyError(() => keyFromPassphrase(pw, { ...fixed, ...change }));
      assert.match(m, re);
      assert.match(m, /header is damaged or was altered/);
    }
  });
});

describe('clnvault keygen', () => {
  test('writes a key file, prints its fingerprint (text and --json), never the key; refuses to overwrite', async () => {
    const dir = area.dir();
    const p = join(dir, 'node.key');
    const r = await runCli(['keygen', p]);
    assert.equal(r.code, 0, show(r));
    const k = keyFromKeyFile(p);
    assert.match(r.stdout, new RegExp(`wrote a new key to ${p} \\(fingerprint ${k.fingerprint}\\)`));
    assert.equal(statSync(p).mode & 0o777, 0o600);
    const again = await runCli(['keygen', p]);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /already exists: a key file is never overwritten/);
    assert.deepEqual(keyFromKeyFile(p).key, k.key);
    const p2 = join(dir, 'json.key');
    const j = await runCli(['keygen', '--json', p2]);
    assert.equal(j.code, 0, show(j));
    const out = JSON.parse(j.stdout) as Record<string, unknown>;
    assert.deepEqual(
      { ok: out.ok, result: out.result, path: out.path, fingerprint: out.fingerprint, kind: out.kind },
      { ok: true, result: 'written', path: p2, fingerprint: keyFromKeyFile(p2).fingerprint, kind: 'key-file' },
    );
    const jf = await runCli(['keygen', '--json', p2]);
    assert.equal(jf.code, 1);
    assert.equal((JSON.parse(jf.stdout) as { ok: boolean }).ok, false);
    // relative paths are resolved against the working directory
    const rel = await runCli(['keygen', 'rel.key'], { cwd: dir });
    assert.equal(rel.code, 0, show(rel));
    assert.ok(existsSync(join(dir, 'rel.key')));
    for (const run of [r, again, j, jf, rel]) {
      for (const f of [p, p2, join(dir, 'rel.key')]) {
        const hex = keyFromKeyFile(f).key.toString('hex');
        assert.ok(!run.stdout.includes(hex) && !run.stderr.includes(hex), 'the key is never printed');
      }
    }
  });

  test('--help answers; bad usage exits 2', async () => {
    const h = await runCli(['keygen', '--help']);
    assert.equal(h.code, 0, show(h));
    assert.match(h.stdout, /^Usage: clnvault keygen \[--json\] PATH/);
    assert.match(h.stdout, /--key-file PATH/);
    const top = await runCli(['--help']);
    assert.match(top.stdout, /keygen +write a new random key file/);
    const none = await runCli(['keygen']);
    assert.equal(none.code, 2, show(none));
    const two = await runCli(['keygen', 'a', 'b']);
    assert.equal(two.code, 2, show(two));
    const nodir = await runCli(['keygen', join(area.root, 'missing', 'k.key')]);
    assert.equal(nodir.code, 1, show(nodir));
    assert.match(nodir.stderr, /directory does not exist/);
  });
});

test('no error message carries a secret (words, passphrases, keys)', () => {
  assert.ok(messages.length > 30, `collected ${messages.length} messages`);
  const secrets: string[] = ['correct horse', 'TREZOR', '11'.repeat(32)];
  for (const c of CASES) {
    if (c.words) secrets.push(...c.words.split(' ').filter((w) => w.length >= 5));
    if (c.passphrase) secrets.push(c.passphrase, c.passphrase.normalize('NFKD'));
    secrets.push(nodeSecretFromHsmSecret(join(KEYS, c.file), c.passphrase ?? undefined).toString('hex'));
    secrets.push(keyFromHsmSecret(join(KEYS, c.file), c.passphrase ?? undefined).key.toString('hex'));
  }
  secrets.push('gravityx', 'beard');
  for (const m of messages) {
    for (const s of secrets) {
      // paths of the fixtures name their layout ("mnemonic-passphrase"), not a secret
      assert.ok(!m.replaceAll(KEYS, '').replaceAll(area.root, '').includes(s), `message carries a secret (${s}): ${m}`);
    }
  }
});
