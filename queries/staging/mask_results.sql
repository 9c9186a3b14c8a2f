-- The former stored table mask_results, in its shape, over old and new parts (stg_mask_results): for queries
-- written before sweeps shared one table
select run_id, condition_id, sample_idx, sample_key, mode, status, error, gold, output_text, parser, parser_version, parsed, correct, option_logprobs
from stg_mask_results
