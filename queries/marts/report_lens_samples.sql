-- The logit-lens rank of the final answer per layer for the first samples of a run, for the report's heatmap
-- (Fig. 9); per model and benchmark one extraction run, the first by shown_order (stg_runs) with rows for the query.
with shown as (
    select l.run_id
    from (select distinct run_id, model, benchmark from stg_logit_lens where query = $query) as l
    join stg_runs as r using (run_id)
    qualify r.shown_order = min(r.shown_order) over (partition by l.model, l.benchmark)
),
chosen as (
    select run_id, sample_idx
    from (select distinct run_id, sample_idx from stg_logit_lens where query = $query and run_id in (select run_id from shown))
    qualify row_number() over (partition by run_id order by sample_idx) <= $max_samples
)
select l.run_id, l.model, l.benchmark, l.sample_idx, l.layer, l.target_rank, l.target_text, l.top_text
from stg_logit_lens as l
join chosen using (run_id, sample_idx)
where l.query = $query
order by l.model, l.benchmark, l.sample_idx, l.layer
