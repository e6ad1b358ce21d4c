import os
import socket
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import metalearn  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "metalearn" / "configs")
# CI lays the shared data beside the checkout; METALEARN_DATA_DIR overrides.
DATA_DIR = Path(os.environ.get("METALEARN_DATA_DIR", ROOT.parent / "shared" / "data"))

# Tiny runs for tests: a few iterations, few episodes, no W&B, CPU.
FAST = ["dataset=synthetic", "logger=none", "device=cpu", "trainer.iterations=4",
        "trainer.meta_batch_size=2", "trainer.eval_every=2", "trainer.val_episodes=4",
        "trainer.test_episodes=6", "trainer.eval_batch_size=3", "task.query=2"]


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    torch.set_num_threads(2)


def local_rendezvous() -> list[str]:
    """torchrun flags for one node on 127.0.0.1 (static rendezvous on a free port).
    `--standalone` resolves `localhost` and the host's name, which fails on a machine without
    /etc/hosts; the loopback address needs no name service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ["--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}"]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def has_omniglot() -> bool:
    return (DATA_DIR / "omniglot-py" / "images_background").is_dir()


needs_omniglot = pytest.mark.skipif(not has_omniglot(), reason=f"Omniglot not found in {DATA_DIR}")


# Left out of `make test-fast` (`-m "not slow"`), run by `make test` and CI: tests that start
# train.py or other programs as processes, train several runs to compare them, read real
# Omniglot, or train long enough to show learning. Each is named here rather than decorated
# so the fast tier's boundary reads in one place.
SLOW = {
    "algorithms/test_engine.py::test_batched_meta_gradient_equals_learn2learn[2nd-order-resnet12]",
    "algorithms/test_engine.py::test_batched_meta_gradient_equals_learn2learn[1st-order-resnet12]",
    "algorithms/test_engine.py::test_batched_meta_gradient_equals_learn2learn[1st-order-conv4]",
    "algorithms/test_engine.py::test_mamlpp_batched_meta_gradient_equals_learn2learn",
    "algorithms/test_evaluate_script.py::test_evaluate_reproduces_the_runs_test_number",
    "algorithms/test_inference.py::test_cli_predicts_a_folder_from_a_trained_run",
    "algorithms/test_inference.py::test_cli_writes_every_row_for_a_non_utf8_name_and_skips_a_fifo",
    "engine/test_faults.py::test_a_refused_command_leaves_the_runs_hydra_record_as_it_was",
    "engine/test_faults.py::test_sigterm_during_start_up_is_one_line_and_exit_143",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[anil]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[baseline]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[baseline_pp]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[fomaml]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[mamlpp]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[metasgd]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[reptile]",
    "algorithms/test_inference.py::test_one_query_at_a_time_equals_all_at_once[snail]",
    "data/test_dataset_configs.py::test_train_runs_two_iterations_on_each_fixture",
    "engine/test_crossdomain.py::test_a_run_is_scored_on_another_domain_at_the_end_and_by_the_evaluate_script",
    "engine/test_engine_switches.py::test_switches_train_and_engines_agree_on_the_first_loss",
    "engine/test_resume_safety.py::test_a_planted_pickle_never_runs_under_any_resume",
    "engine/test_train.py::test_wandb_offline_run_file_holds_config_and_history",
    "models/test_backbones.py::test_backbone_config_trains_under_the_batched_engine",
    "models/test_resnet12.py::test_dropout_only_in_training_and_dropblock_ramps_up",
    "sweeps/test_wandb_failures.py::test_wandb_log_failing_mid_run_warns_once_and_training_finishes",
    "sweeps/test_wandb_failures.py::test_best_checkpoint_is_logged_as_artifact_when_asked",
    "algorithms/test_algorithms.py::test_algorithm_configs_build_their_learner",
    "algorithms/test_algorithms.py::test_derivative_order_annealing_switches_at_the_configured_iteration",
    "algorithms/test_baseline.py::test_heads_are_fitted_on_the_support_only",
    "algorithms/test_baseline.py::test_pretraining_beats_the_untrained_backbone_on_identical_episodes",
    "algorithms/test_baseline.py::test_cross_domain_presets_compose_and_build",
    "algorithms/test_evaluate_script.py::test_other_ways_work_for_protonet_and_are_a_config_error_for_maml",
    "algorithms/test_learners.py::test_training_beats_chance_and_the_untrained_learner",
    "algorithms/test_learners.py::test_train_py_runs_each_algorithm_end_to_end",
    "algorithms/test_learners.py::test_a_new_algorithm_is_one_file_and_one_yaml_with_no_other_edit",
    "algorithms/test_presets.py::test_preset_composes_with_the_paper_values_and_builds",
    "data/test_omniglot.py::test_real_omniglot_splits_sizes_and_preprocessing",
    "data/test_omniglot.py::test_splits_share_no_character_and_rotations_are_classes",
    "data/test_omniglot.py::test_split_seed_changes_split",
    "data/test_omniglot_lake.py::test_lake_split_trains_on_background_and_tests_on_evaluation_alphabets",
    "data/test_omniglot_lake.py::test_bad_split_options_are_one_clear_error",
    "engine/test_engine_switches.py::test_benchmark_small_cpu_writes_json",
    "engine/test_faults.py::test_every_shipped_config_passes_validation",
    "engine/test_faults.py::test_train_py_answers_typos_and_bad_values_with_one_line",
    "engine/test_faults.py::test_an_unwritable_output_dir_is_one_line_not_a_hydra_traceback",
    "engine/test_faults.py::test_a_failed_write_is_one_disk_error_keeps_checkpoints_and_resumes_identically",
    "engine/test_faults.py::test_ctrl_c_saves_the_iteration_and_resumes_identically",
    "engine/test_faults.py::test_a_signal_during_the_final_test_stops_at_once_with_everything_saved",
    "engine/test_faults.py::test_a_really_full_disk_is_one_line_and_resumes_elsewhere_identically",
    "engine/test_resume_safety.py::test_planted_pickles_give_one_error_line_from_train_and_evaluate",
    "engine/test_resume_safety.py::test_a_file_from_another_program_or_version_is_named_as_such",
    "engine/test_resume_safety.py::test_a_busy_run_directory_is_refused_and_a_dead_owners_lock_taken_over",
    "engine/test_resume_safety.py::test_a_finished_or_resumable_run_is_kept_unless_overwrite",
    "engine/test_resume_safety.py::test_resume_dir_applies_safe_overrides_and_refuses_others",
    "engine/test_resume_safety.py::test_resuming_a_cosine_run_with_more_iterations_follows_the_longer_schedule",
    "engine/test_runs.py::test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run",
    "engine/test_runs.py::test_sigterm_saves_last_and_exits_with_the_preemption_code",
    "engine/test_runs.py::test_a_truncated_checkpoint_is_reported_and_an_older_one_resumes",
    "engine/test_runs.py::test_resume_refuses_a_changed_config_and_reuses_a_run_dir_config",
    "engine/test_runs.py::test_nan_steps_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint",
    "engine/test_runs.py::test_an_absurd_inner_lr_stops_with_one_clear_line",
    "engine/test_runs.py::test_a_resumed_run_continues_the_same_wandb_run",
    "engine/test_train.py::test_training_beats_chance_on_a_learnable_task",
    "engine/test_train.py::test_bad_input_gives_one_clear_line_and_nonzero_exit",
    "engine/test_train.py::test_unknown_config_option_fails",
    "models/test_backbones.py::test_train_py_trains_a_timm_backbone",
    "online/test_online.py::test_each_round_is_scored_before_the_learner_learns_from_it",
    "online/test_online.py::test_resume_after_kill_9_equals_an_uninterrupted_stream",
    "online/test_online.py::test_a_finished_stream_is_never_written_over_and_a_busy_directory_is_refused",
    "online/test_online.py::test_frozen_scores_a_saved_checkpoint_and_needs_one",
    "online/test_online.py::test_train_log_follows_the_stream",
    "scripts/test_profile_engine.py::test_profile_table_attributes_time_to_phases_and_kernels",
    "sweeps/test_multirun.py::test_compare_runs_prints_sorted_table_and_writes_png_csv_md",
    "sweeps/test_multirun.py::test_a_failing_job_does_not_end_the_multirun",
    "sweeps/test_sweepers.py::test_optuna_sweep_writes_best_params",
    "sweeps/test_sweepers.py::test_wandb_agent_command_runs_through_train_py_parser",
    "sweeps/test_sweepers.py::test_submitit_local_launcher_runs_two_jobs",
    "sweeps/test_wandb_failures.py::test_unreachable_wandb_server_falls_back_to_offline",
    "test_docs_commands.py::test_documented_script_answers_help",
    "test_packaging.py::test_the_wheel_holds_every_config_and_the_console_commands",
    "test_progress.py::test_train_log_holds_setting_training_validation_and_result",
    "test_progress.py::test_resume_from_another_directory_continues_that_runs_train_log",
    "test_progress.py::test_a_60k_iteration_run_logs_under_1_mb_off_a_terminal",
    "test_extending.py::test_the_documented_algorithm_dataset_and_backbone_train_and_predict",
}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    stale = [n for n in SLOW if not (tests / n.split("::")[0]).is_file()
             or f"def {n.split('::')[1].split('[')[0]}(" not in (tests / n.split("::")[0]).read_text()]
    if stale:  # a renamed test would silently join the fast tier
        raise pytest.UsageError(f"tests/conftest.py SLOW names no test: {stale}")
    for item in items:
        where = Path(item.fspath).relative_to(tests).as_posix()
        if f"{where}::{getattr(item, 'originalname', item.name)}" in SLOW or f"{where}::{item.name}" in SLOW:
            item.add_marker(pytest.mark.slow)
