// Host settings a test needs for a while, put back afterwards.
import { readFileSync, writeFileSync } from 'node:fs';

const PING_RANGE = '/proc/sys/net/ipv4/ping_group_range';

/**
 * Let root's group open ICMP echo ("ping") sockets (net.ipv4.ping_group_range,
 * off by default on Debian): returns what puts the old range back.
 */
export function allowPingSockets(): () => void {
  const old = readFileSync(PING_RANGE, 'utf8').trim();
  writeFileSync(PING_RANGE, '0 0');
  return () => writeFileSync(PING_RANGE, old);
}
