package main

import (
	"context"
	"os"
	_ "time/tzdata" // CronJob time zones, as the upstream mains import it

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// The entry points below are those of k8s.io/kubernetes/cmd/*/main.go.

func kubeAPIServer() int { return cli.Run(apiserver.NewAPIServerCommand()) }

func kubeScheduler() int { return cli.Run(scheduler.NewSchedulerCommand()) }

func kubeControllerManager() int { return cli.Run(controllermanager.NewControllerManagerCommand()) }

func kubelet() int { return cli.Run(kubeletapp.NewKubeletCommand(context.Background())) }

func kubeProxy() int { return cli.Run(proxy.NewProxyCommand()) }

func kubectl() int {
	// As cmd/kubectl does: verbosity is set before the command is built, so that
	// building it (plugins, .kuberc) can log.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
	return 0
}
