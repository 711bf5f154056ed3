typedef int tly_runner_placeholder;
