-- Whether a row claims the lower-cased name $1 (migration 0002): the cheap duplicate check
-- before any image work. The INSERT's claim is what decides; this only saves work.
SELECT 1 FROM photograph_names WHERE name = $1
