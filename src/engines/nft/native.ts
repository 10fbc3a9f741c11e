/**
 * The nft engine's native executor: the addon builds the netlink messages of the ops and sends them
 * as one batch, on a worker thread; reads table ip iptlb (or ip6 iptlb) back with its counters.
 */
import { type NftEndpoint, type NftFamily, type NftOriginalJump, type NftTransaction, type NftView } from './ops.js';
import { protoName } from './original.js';
import { renderNft } from './render.js';
import type { NativeAddon } from '../../platform/addon.js';
import type { CommitResult } from '../../model/types.js';
import type { NftExecutor } from './executor.js';
import { mapNativeError } from '../legacy/native.js';
import type { IptlbError } from '../../model/errors.js';
import type { Capability } from '../../platform/caps.js';

/** What the nft engine takes: CAP_NET_ADMIN alone (no raw socket, unlike x_tables). */
const NFT_CAPABILITIES: readonly Capability[] = ['CAP_NET_ADMIN'];

/**
 * {@link mapNativeError} for the nft engine: a permission failure names CAP_NET_ADMIN only (the legacy engine's
 * mapping said CAP_NET_RAW was needed too, which a unit granting CAP_NET_ADMIN for nft does not need).
 */
export function mapNftNativeError(e: unknown, has?: (c: Capability) => boolean): IptlbError {
  return mapNativeError(e, NFT_CAPABILITIES, has);
}

export class NftNativeExecutor implements NftExecutor {
  readonly kind = 'native' as const;
  readonly engine = 'nft' as const;

  constructor(private readonly addon: NativeAddon) {}

  async commit(tx: NftTransaction): Promise<CommitResult> {
    try {
      const r = await this.addon.nftCommit(tx);
      return { durationMs: r.durationMs };
    } catch (e) {
      throw mapNftNativeError(e);
    }
  }

  async read(family: NftFamily = 'ip'): Promise<NftView> {
    try {
      // Without an argument for ip: the addon's default, as before.
      return await (family === 'ip' ? this.addon.nftRead() : this.addon.nftRead(family));
    } catch (e) {
      throw mapNftNativeError(e);
    }
  }

  async lookup(family: NftFamily, addresses: NftEndpoint[]): Promise<NftView> {
    try {
      return await this.addon.nftRead(family, addresses);
    } catch (e) {
      throw mapNftNativeError(e);
    }
  }

  /**
   * Two filtered rule dumps (OUTPUT, PREROUTING of `<family> nat`) in one call of the addon, whichever chains are
   * asked for: a second dump costs less than a call.
   */
  async originalJumps(family: NftFamily): Promise<NftOriginalJump[]> {
    try {
      const jumps = await this.addon.nftOriginalJumps(family);
      return jumps.map(({ proto, ...j }) => (proto === undefined ? j : { ...j, proto: protoName(proto) }));
    } catch (e) {
      throw mapNftNativeError(e);
    }
  }

  async render(tx: NftTransaction): Promise<string> {
    return renderNft(tx);
  }
}
