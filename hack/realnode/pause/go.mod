// The pod sandbox ("pause") image of hack/realnode: nothing is pulled there, so the image is
// built locally. A module of its own, outside kproxy's build.
module github.com/kproxy-dev/kproxy/hack/realnode/pause

go 1.26.8
