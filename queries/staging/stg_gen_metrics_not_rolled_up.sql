-- the gen_metrics rows of runs whose gen_scores / gen_head_scores rollups were not all built from the current
-- definitions (by their files' footers; or some part lacks them): stg_gen_scores and stg_gen_head_scores recompute
-- their sums from them with the current definitions. The session's gen_metrics_not_rolled_up holds those runs' files
-- only, so when every run is current (the usual case) no gen_metrics row is read.
select * from gen_metrics_not_rolled_up
