-- one row per run, query, score, place (1..ranks_kept()) and head: in how many samples the head held
-- that place among the sample's heads. From the per-part rollups of runs built with the current
-- definitions (add_up_head_ranks), else recomputed from head_metrics by the rollups' own macro.
-- rank is a plain column in both branches (cast in the recomputing one), so that a filter on it reaches
-- the rollup files' scan: their rows sorted by query, score and rank, row groups past the top-k are skipped
select * from add_up_head_ranks('rolled_up_head_ranks')
union all
select run_id, query, score, cast(rank as smallint) as rank, layer, head, cast(n as bigint) as n
from rank_head_metrics('head_metrics_not_rolled_up')
