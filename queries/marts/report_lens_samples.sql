-- The logit-lens rank of the final answer per layer for the first samples of each run, for the report's heatmap (Fig. 9).
with chosen as (
    select run_id, sample_idx
    from (select distinct run_id, sample_idx from stg_logit_lens where query = $query)
    qualify row_number() over (partition by run_id order by sample_idx) <= $max_samples
)
select l.model, l.benchmark, l.sample_idx, l.layer, l.target_rank, l.target_text, l.top_text
from stg_logit_lens as l
join chosen using (run_id, sample_idx)
where l.query = $query
order by l.model, l.benchmark, l.sample_idx, l.layer
