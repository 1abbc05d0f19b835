// Package app is kproxy's command line: kube-proxy's flags and config file, the daemon's
// wiring (informers -> proxiers -> iptables, health and metrics servers), --cleanup, and
// the subcommands: `render` prints the rules a node would get from manifests, `trace`
// walks a packet through a node's rules, `diagnose` checks a node for why Services may
// not answer.
package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// NewCommand returns the kproxy command. It accepts kube-proxy's flags unchanged, so an
// existing DaemonSet's arguments work as they are.
func NewCommand() *cobra.Command {
	opts := NewOptions()
	showVersion := versionOff
	cmd := &cobra.Command{
		Use:   "kproxy",
		Short: "kproxy: a drop-in replacement for kube-proxy in iptables mode",
		Long: `kproxy programs Kubernetes Services into iptables on each node, with the same
chains, rules and flags as kube-proxy in iptables mode.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		// kube-proxy has no shell completion; keep the command line identical.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Before anything else, as upstream: --version works whatever the config says.
			if showVersion != versionOff {
				return printVersion(cmd.OutOrStdout(), showVersion, version.Get())
			}
			ctx := cmd.Context()
			cfg, err := opts.Complete(ctx, cmd.Flags())
			if err != nil {
				return err
			}
			if err := applyLogging(cfg, nil); err != nil {
				return err
			}
			if opts.WriteConfigTo != "" {
				return opts.WriteConfigFile()
			}
			if opts.Cleanup {
				return CleanupAll(ctx, cfg)
			}
			return Run(ctx, cfg, opts.loadedConfig, opts.InitOnly)
		},
	}
	opts.AddFlags(cmd.Flags())
	addVersionFlag(cmd.Flags(), &showVersion)
	cmd.AddCommand(newRenderCommand())
	cmd.AddCommand(newTraceCommand())
	cmd.AddCommand(newDiagnoseCommand())
	return cmd
}

// applyLogging makes cfg's logging settings (format, verbosity, flush
// frequency, ...) the process's, through component-base as upstream does.
// It can take effect once per process; streams nil means stderr and stdout.
func applyLogging(cfg *config.Config, streams *logsapi.LoggingOptions) error {
	gates, err := config.LoggingFeatureGate(cfg.FeatureGates)
	if err != nil {
		return fmt.Errorf("applying logging settings: %w", err)
	}
	if err := logsapi.ValidateAndApplyWithOptions(&cfg.Logging, streams, gates); err != nil {
		return fmt.Errorf("applying logging settings: %w", err)
	}
	return nil
}

// Main runs the command and returns the process exit code; errors are printed as one line.
func Main(ctx context.Context, args []string) int {
	cmd := NewCommand()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	klog.Flush()
	if err == nil || errors.Is(err, context.Canceled) {
		return 0
	}
	if failed := (DiagnosisFailedError{}); errors.As(err, &failed) {
		// The report said it all; the status says there were problems.
		return 1
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "kproxy:", err)
	return 1
}
