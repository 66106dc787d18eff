#!/bin/sh
echo "golden app"
