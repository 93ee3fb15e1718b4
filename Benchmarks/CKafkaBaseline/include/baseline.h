int veil_baseline_placeholder(void);
