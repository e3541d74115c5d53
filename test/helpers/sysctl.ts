// Host settings a test needs for a while, put back afterwards.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const PING_RANGE = '/proc/sys/net/ipv4/ping_group_range';
/** The host's own range, saved by the first test file that changes it. */
const SAVED = path.join(os.tmpdir(), '.phaul-test-ping-range');

/**
 * Let root's group open ICMP echo ("ping") sockets (net.ipv4.ping_group_range,
 * off by default on Debian): returns what puts the host's range back. The
 * range is saved once, so that test files run side by side do not save each
 * other's setting as the host's.
 */
export function allowPingSockets(): () => void {
  try {
    writeFileSync(SAVED, readFileSync(PING_RANGE, 'utf8').trim(), { flag: 'wx' });
  } catch {
    /* saved by another test file still running */
  }
  writeFileSync(PING_RANGE, '0 0');
  return () => {
    try {
      writeFileSync(PING_RANGE, readFileSync(SAVED, 'utf8'));
      rmSync(SAVED);
    } catch {
      /* put back already */
    }
  };
}
