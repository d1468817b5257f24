"""SecAgg+ that survives a site lost before it shared its keys (Flower 1.32.1).

Flower's workflow keeps a site that dropped during set-up or key sharing among the sampled
sites, so the unmasking stage asks the survivors for key shares they never received and the
round halts ("Not enough shares to recover secret"). Such a site never entered anyone's pairwise
masks, so before collecting masked vectors this workflow forgets every site that did not finish
key sharing. Sites lost later are handled by SecAgg+ itself (their masks are reconstructed).
"""

from __future__ import annotations

from flwr.server.workflow import SecAggPlusWorkflow


class TolerantSecAggPlusWorkflow(SecAggPlusWorkflow):
    def collect_masked_vectors_stage(self, grid, context, state):  # noqa: D102 (Flower's hook)
        shared = set(state.active_node_ids)
        state.sampled_node_ids = set(shared)
        state.nid_to_neighbours = {n: nbrs & shared for n, nbrs in state.nid_to_neighbours.items() if n in shared}
        return super().collect_masked_vectors_stage(grid, context, state)
