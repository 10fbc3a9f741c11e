/** The agent's metric families (no etcd, no root). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
test('agent metrics: applied revision, owned and refused profiles, one watch state set', async () => {
  const { agentMetrics } = await import('../../src/cli/commands/agent.js');
  const text = agentMetrics({ revision: 42, profiles: 3, refused: [{}], watch: 'watching' });
  assert.match(text, /^iptlb_agent_applied_revision 42$/m);
  assert.match(text, /^iptlb_agent_profiles 3$/m);
  assert.match(text, /^iptlb_agent_refused_profiles 1$/m);
  assert.deepEqual(text.match(/^iptlb_agent_watch_state\{state="(\w+)"\} 1$/gm), [
    'iptlb_agent_watch_state{state="watching"} 1',
  ]);
  for (const family of ['applied_revision', 'profiles', 'refused_profiles', 'watch_state'])
    assert.match(text, new RegExp(`^# TYPE iptlb_agent_${family} gauge$`, 'm'));
});
