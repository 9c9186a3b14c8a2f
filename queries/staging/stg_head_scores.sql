-- one row per run, query, layer, head and summarised value (summarised_names(): the head scores, then the
-- segments' attention mass): the samples that have the value, and its sum, sum of squares and largest
-- value over them. Runs whose rollups were built from the current definitions add up their per-part
-- rollups (add_up_head_scores: a few rows per head and score); the others (parts older than the
-- definitions' versions, or another version) get the same sums from their head_metrics rows by the
-- rollups' own macro, with the current definitions.
select * from add_up_head_scores('rolled_up_head_scores')
union all
select * from summarise_head_metrics('head_metrics_not_rolled_up')
